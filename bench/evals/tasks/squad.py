"""SQuAD (v1.1 validation, oe-eval's 1,000-question sample) with the official EM/F1.

The prompt is oe-eval's: ``Title: ..\\nBackground: ..\\nQuestion: ..\\nAnswer:``; the reply is cut at its
first newline and scored against every gold answer, keeping the best (the official rule).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from bench.evals.data import read_config, read_requests, unique_docs
from bench.evals.scoring import max_over_golds, mean, squad_exact, squad_f1
from bench.evals.tasks.base import ApiKind, Prompt, Reply, Scored, answer_line, pick_shots, sample_docs

_TASK, _VARIANT = "squad", "bpb_5shot"
_NEXT_PROMPT = ("\nTitle:", "\nBackground:", "\nQuestion:")  # where a completion starts the next document
_CHAT_INSTRUCTION = "Answer with a short span copied from the background text, nothing else.\n\n"


@dataclass(frozen=True)
class SquadDoc:
    """One question with its background paragraph (inside ``query``) and gold answers."""

    id: str
    query: str
    answers: tuple[str, ...]


def read_squad() -> list[SquadDoc]:
    """All SQuAD documents in the oe-eval file."""
    return [
        SquadDoc(str(row["doc"]["id"]), row["doc"]["query"], tuple(row["doc"]["answers_text"]))
        for row in unique_docs(read_requests(_TASK, _VARIANT))
    ]


class SquadTask:
    """Extractive QA scored by F1 (primary) and exact match."""

    name = "squad"
    primary_metric = "f1"
    higher_is_better = True

    def __init__(self, *, shots: int, api: ApiKind, max_tokens: int, seed: int) -> None:
        self.shots, self.api, self.max_tokens, self.seed = shots, api, max_tokens, seed
        self._pool: list[SquadDoc] = []
        description = read_config(_TASK, _VARIANT)["task_config"]["context_kwargs"].get("description", "")
        self._description = str(description)

    def load(self, limit: int | None, seed: int) -> list[SquadDoc]:
        """A seeded sample; the rest of the file is the few-shot pool."""
        docs = sample_docs(read_squad(), None, seed)
        chosen = docs if limit is None else docs[:limit]
        self._pool = docs[len(chosen) :] if self.shots else []
        return chosen

    def to_request(self, doc: SquadDoc) -> Prompt:
        """oe-eval's SQuAD prompt with the shots' first gold answer."""
        examples = pick_shots(self._pool, doc.id, self.shots, self.seed) if self.shots else []
        instruction = self._description if self.api == "completions" else _CHAT_INSTRUCTION
        return Prompt(
            query=doc.query,
            max_tokens=self.max_tokens,
            shots=tuple((s.query, " " + s.answers[0]) for s in examples),
            instruction=instruction,
            # Not "\n": a reply that starts with a newline would end before its answer (issue #16).
            stop=_NEXT_PROMPT if self.api == "completions" else (),
        )

    async def score(self, doc: SquadDoc, reply: Reply) -> Scored:
        """Best EM and F1 over the gold answers."""
        answer = answer_line(reply.text)
        f1 = max_over_golds(squad_f1, answer, doc.answers)
        exact = max_over_golds(squad_exact, answer, doc.answers)
        return Scored(answer or None, f1, list(doc.answers), {"exact_match": exact, "f1": f1})

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float | None]:
        """Mean F1 and mean exact match."""
        return {
            "f1": mean([s.fields["f1"] for s in scored]),
            "exact_match": mean([s.fields["exact_match"] for s in scored]),
        }
