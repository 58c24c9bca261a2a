"""``math-absdiff``: GSM8K, the numeric part of MATH-500, or a user's OpenMath-style JSONL.

The score of a sample is ``|predicted - gold|`` of the numeric answers (lower is better); exact-match
accuracy is reported beside it. The headline is the *median* absolute difference: a small model's run-on
replies ("12345678910111213...") give differences near 1e80, and one of them decides a plain mean (a mean of
5e82 over 200 GSM8K documents, inf on a GPU run). Beside it, ``absdiff_log10_mean`` is the mean of
``log10(1 + |predicted - gold|)``, the mean order of magnitude of the error (numeric-estimation evals score
on this log scale, e.g. the Fermi-problems benchmark, Kalyan et al. 2021), and ``absdiff_mean`` is the plain
mean where it is finite. lm-evaluation-harness scores GSM8K by exact match alone; ``exact_match`` is that.

Few-shot examples are the standard chain-of-thought exemplars that
oe-eval ships in its prompts (8 for GSM8K, 4 Minerva ones for MATH), taken in order.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from bench.evals.data import EvalDataError, read_requests, unique_docs
from bench.evals.extract import extract_number, numbers_equal, parse_gold
from bench.evals.scoring import mean
from bench.evals.tasks.base import ApiKind, Prompt, Reply, Scored, sample_docs

MathSource = Literal["gsm8k", "math500"]

_GSM_INSTRUCTION = "Solve the problem step by step, then finish with 'The answer is N.' (N a number).\n\n"
_MATH_INSTRUCTION = "Solve the problem. Put the final numeric answer in \\boxed{}.\n\n"


@dataclass(frozen=True)
class MathDoc:
    """One problem with a numeric gold answer."""

    id: str
    question: str
    gold_text: str
    gold: float


def _gsm8k_docs() -> tuple[list[MathDoc], list[tuple[str, str]]]:
    rows = unique_docs(read_requests("gsm8k", "gold_bpb_5shot"))
    docs = [
        MathDoc(f"gsm8k/{row['doc_id']}", row["doc"]["question"], str(row["doc"]["short_answer"]), gold)
        for row in rows
        if (gold := parse_gold(str(row["doc"]["short_answer"]))) is not None
    ]
    return docs, _split_shots(rows[0]["request"]["context"], "\n\nQuestion: ", "\nAnswer:", "Question: ")


def _math500_docs() -> tuple[list[MathDoc], list[tuple[str, str]]]:
    rows = unique_docs(read_requests("minerva_math_500", "gold_bpb_0shot"))
    docs = [
        MathDoc(f"math500/{row['doc']['index']}", row["doc"]["problem"], row["doc"]["answer"], gold)
        for row in rows
        if (gold := parse_gold(row["doc"]["answer"])) is not None
    ]
    return docs, _split_shots(rows[0]["request"]["context"], "\n\nProblem:\n", "\n\nSolution:", "Problem:\n")


def _split_shots(context: str, between: str, answer_tag: str, first_tag: str) -> list[tuple[str, str]]:
    """The exemplars of an oe-eval few-shot context, as (question, answer) pairs; the query is dropped."""
    blocks = context.removeprefix(first_tag).split(between)[:-1]
    shots = []
    for block in blocks:
        question, _, answer = block.partition(answer_tag)
        shots.append((question.strip(), answer.strip()))
    return shots


def read_openmath_jsonl(path: Path) -> list[MathDoc]:
    """Problems from a JSONL with ``problem`` and ``expected_answer``; non-numeric answers are skipped."""
    docs = []
    with path.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                question, answer = str(record["problem"]), str(record["expected_answer"])
            except (json.JSONDecodeError, KeyError) as exc:
                message = f"{path}:{line_no}: need a JSON object with 'problem' and 'expected_answer'"
                raise EvalDataError(message) from exc
            gold = parse_gold(answer)
            if gold is not None:
                docs.append(MathDoc(f"{path.stem}/{line_no}", question, answer, gold))
    return docs


class MathAbsDiffTask:
    """Numeric math answers scored by absolute difference."""

    name = "math-absdiff"
    primary_metric = "absdiff_median"
    higher_is_better = False

    def __init__(
        self, *, source: MathSource, data: Path | None, shots: int, api: ApiKind, max_tokens: int
    ) -> None:
        self.source, self.data, self.shots, self.api, self.max_tokens = source, data, shots, api, max_tokens
        self._exemplars: list[tuple[str, str]] = []
        self._boxed = source == "math500" and data is None

    def load(self, limit: int | None, seed: int) -> list[MathDoc]:
        """GSM8K / MATH-500 (numeric answers only) or the user's file, seeded subset."""
        docs, self._exemplars = _math500_docs() if self._boxed else _gsm8k_docs()
        if self.data is not None:
            docs = read_openmath_jsonl(self.data)
        if self.shots > len(self._exemplars):
            raise ValueError(f"{self.source} has {len(self._exemplars)} exemplars; --shots {self.shots}")
        return sample_docs(docs, limit, seed)

    def to_request(self, doc: MathDoc) -> Prompt:
        """Question/Answer (GSM8K style) or Problem/Solution (Minerva style) prompt."""
        stop: tuple[str, ...]
        if self._boxed:
            shots = tuple((f"Problem:\n{q}\n\nSolution:", f" {a}") for q, a in self._exemplars[: self.shots])
            query, stop = f"Problem:\n{doc.question}\n\nSolution:", ("\n\nProblem:",)
        else:
            shots = tuple((f"Question: {q}\nAnswer:", f" {a}") for q, a in self._exemplars[: self.shots])
            query, stop = f"Question: {doc.question}\nAnswer:", ("\n\nQuestion:", "\n\n\n")
        instruction = _MATH_INSTRUCTION if self._boxed else _GSM_INSTRUCTION
        return Prompt(
            query=query,
            max_tokens=self.max_tokens,
            shots=shots,
            instruction=instruction if self.api == "chat" else "",
            stop=stop,
        )

    async def score(self, doc: MathDoc, reply: Reply) -> Scored:
        """Absolute difference and exact match of the extracted number."""
        value = extract_number(reply.text)
        absdiff = None if value is None else abs(value - doc.gold)
        exact = value is not None and numbers_equal(value, doc.gold)
        return Scored(
            extracted=None if value is None else repr(value),
            score=absdiff,
            gold=doc.gold_text,
            fields={"absdiff": absdiff, "exact_match": float(exact)},
        )

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float | None]:
        """Median, log-scale mean and (finite) plain mean of the absolute difference over extracted answers;
        exact match over all samples. No value is inf or nan."""
        diffs = [s.score for s in scored if s.score is not None and math.isfinite(s.score)]
        return {
            "absdiff_median": statistics.median(diffs) if diffs else None,
            "absdiff_log10_mean": mean([math.log10(1.0 + d) for d in diffs]),
            "absdiff_mean": finite_mean(diffs),
            "exact_match": mean([s.fields["exact_match"] for s in scored]),
            "extracted_rate": len(diffs) / len(scored) if scored else None,
        }


def finite_mean(values: Sequence[float]) -> float | None:
    """The arithmetic mean, or None where it overflows a float (values near 1e308) or there are none."""
    total = 0.0
    for value in values:
        total += value / len(values)  # divided first: a sum of several 1e308 would be inf
    return total if values and math.isfinite(total) else None
