"""The task contract: ``load()``, ``to_request()``, ``score()`` (plus ``aggregate()`` over samples).

A task never talks to the endpoint. It turns a document into a :class:`Prompt` (generate) or a
:class:`Choices` (loglikelihood); the runner sends it and hands the :class:`Reply` back to ``score``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, TypeVar

ApiKind = Literal["chat", "completions"]  # bench.api.Api, once validated


@dataclass(frozen=True)
class Prompt:
    """A generation request: optional few-shot ``(question, answer)`` pairs, then the query.

    In completion form the answer of a shot follows its question directly (so it usually starts with a
    space); in chat form each shot becomes a user/assistant turn and ``instruction`` the system message.
    """

    query: str
    max_tokens: int
    shots: tuple[tuple[str, str], ...] = ()
    instruction: str = ""
    stop: tuple[str, ...] = ()
    separator: str = "\n\n"

    def completion_text(self) -> str:
        """The prompt as one string for ``/v1/completions``."""
        parts = [question + answer for question, answer in self.shots] + [self.query]
        return self.instruction + self.separator.join(parts)

    def chat_messages(self) -> list[dict[str, str]]:
        """The prompt as messages for ``/v1/chat/completions``."""
        messages = [{"role": "system", "content": self.instruction.strip()}] if self.instruction else []
        for question, answer in self.shots:
            messages.append({"role": "user", "content": question.strip()})
            messages.append({"role": "assistant", "content": answer.strip()})
        messages.append({"role": "user", "content": self.query.strip()})
        return messages


@dataclass(frozen=True)
class Choices:
    """A loglikelihood request: each continuation is scored after the same context."""

    context: str
    continuations: tuple[str, ...]


@dataclass(frozen=True)
class Reply:
    """What the endpoint returned for one document."""

    text: str = ""
    choice_logprobs: tuple[float, ...] = ()
    choice_tokens: tuple[int, ...] = ()


@dataclass(frozen=True)
class Scored:
    """One document's result: the extracted answer, its score, and the task's per-sample fields."""

    extracted: str | None
    score: float | None
    gold: Any
    fields: dict[str, Any] = field(default_factory=dict)


class Doc(Protocol):
    """Every document has a stable id."""

    @property
    def id(self) -> str: ...


DocT = TypeVar("DocT", bound=Doc)


class Task(Protocol[DocT]):
    """One eval task. ``aggregate`` must return ``primary_metric`` among its keys."""

    name: str
    primary_metric: str
    higher_is_better: bool

    def load(self, limit: int | None, seed: int) -> list[DocT]:
        """The documents to evaluate, a seeded sample of at most ``limit``."""
        ...

    def to_request(self, doc: DocT) -> Prompt | Choices:
        """What to send for ``doc``."""
        ...

    async def score(self, doc: DocT, reply: Reply) -> Scored:
        """Score one reply (async because HumanEval runs code)."""
        ...

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float | None]:
        """Corpus-level metrics over the scored samples."""
        ...


def answer_line(text: str) -> str:
    """The first non-blank line of a reply, stripped: leading whitespace or newlines never end an answer."""
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def sample_docs(docs: Sequence[DocT], limit: int | None, seed: int) -> list[DocT]:
    """A seeded random subset of ``docs`` (all of them, shuffled, when ``limit`` is None)."""
    order = list(docs)
    random.Random(seed).shuffle(order)
    return order if limit is None else order[:limit]


def pick_shots(pool: Sequence[DocT], doc_id: str, shots: int, seed: int) -> list[DocT]:
    """``shots`` pool documents other than ``doc_id``, drawn per document so runs are reproducible."""
    candidates = [item for item in pool if item.id != doc_id]
    if shots > len(candidates):
        raise ValueError(f"asked for {shots} shots but the pool has only {len(candidates)} documents")
    return random.Random(f"{seed}:{doc_id}").sample(candidates, shots)
