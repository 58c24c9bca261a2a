"""ARC-Challenge / ARC-Easy (test split), generative or by loglikelihood over the choices.

*generate*: the prompt lists the choices as ``A.``..``E.``; the first standalone letter of the reply's first
non-blank line is the answer (leading newlines are skipped, never taken as the answer's end); accuracy and
macro-F1 over the letters. In completion mode it is 5-shot by default (oe-eval's ARC MC format): at zero
shots the bundled instruct model ends its reply at once. *loglikelihood*: each choice text is scored after
``Question: ...\\nAnswer:`` (lm-eval's ``arc_easy`` format: the choice follows one space); the choice with
the highest summed logprob wins (``acc``), and per character of the choice text for ``acc_norm``: lm-eval
0.4.x divides by ``len(choice)`` of ``doc_to_choice``, its target delimiter (the leading space) excluded,
although it scores the continuation with the space (``lm_eval/api/task.py``, ``process_results``).
Few-shot examples come from the validation split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from bench.evals.data import read_requests, unique_docs
from bench.evals.scoring import macro_f1, mean
from bench.evals.tasks.base import ApiKind, Choices, Prompt, Reply, Scored, answer_line, pick_shots, sample_docs

ArcMode = Literal["generate", "loglikelihood"]
LETTERS = "ABCDE"
_LETTER = re.compile(r"(?<![A-Za-z])([A-E])(?![A-Za-z])")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?\s*\(?([A-E])(?![A-Za-z])", re.IGNORECASE)
_INSTRUCTION = "Answer the multiple-choice question with the letter of the correct choice only.\n\n"
# A completion that starts the next question has ended its answer; "\n" would end one that starts with a newline.
_NEXT_QUESTION = ("\nQuestion:",)


@dataclass(frozen=True)
class ArcDoc:
    """One ARC question: the question text, the choice texts and the index of the right one."""

    id: str
    question: str
    choices: tuple[str, ...]
    gold: int

    @property
    def gold_letter(self) -> str:
        """The right choice as a letter."""
        return LETTERS[self.gold]

    def mc_question(self) -> str:
        """The question with lettered choices, ending in ``Answer:``."""
        lines = [f" {LETTERS[i]}. {text}" for i, text in enumerate(self.choices)]
        return "Question: " + self.question + "\n" + "\n".join(lines) + "\nAnswer:"


def read_arc(subset: str, split: Literal["test", "val"]) -> list[ArcDoc]:
    """ARC documents from oe-eval's ``<subset>/<split>_rc_5shot`` file."""
    docs = []
    for row in unique_docs(read_requests(subset, f"{split}_rc_5shot")):
        doc = row["doc"]
        question = doc["query"].removeprefix("Question: ").removesuffix("\nAnswer:")
        docs.append(ArcDoc(str(doc["id"]), question, tuple(doc["choices"]), int(doc["gold"])))
    return docs


def extract_letter(text: str, n_choices: int) -> str | None:
    """The chosen letter: after "answer is" if present, else the first standalone capital A-E."""
    valid = LETTERS[:n_choices]
    stated = _ANSWER_IS.search(text)
    if stated and stated.group(1) in valid:
        return stated.group(1)
    for match in _LETTER.finditer(text):
        if match.group(1) in valid:
            return match.group(1)
    return None


class ArcTask:
    """ARC scored by accuracy and macro-F1 (generate) or accuracy from loglikelihoods."""

    higher_is_better = True

    def __init__(
        self, *, subset: str, mode: ArcMode, shots: int, api: ApiKind, max_tokens: int, seed: int
    ) -> None:
        self.name = subset.replace("_", "-")
        self.subset, self.mode, self.shots, self.api = subset, mode, shots, api
        self.max_tokens, self.seed = max_tokens, seed
        self.primary_metric = "acc" if mode == "loglikelihood" else "accuracy"
        self._pool: list[ArcDoc] = []

    def load(self, limit: int | None, seed: int) -> list[ArcDoc]:
        """A seeded sample of the test split; the validation split is the few-shot pool."""
        self._pool = read_arc(self.subset, "val") if self.shots else []
        return sample_docs(read_arc(self.subset, "test"), limit, seed)

    def to_request(self, doc: ArcDoc) -> Prompt | Choices:
        """Lettered prompt (generate) or the choice continuations (loglikelihood)."""
        examples = pick_shots(self._pool, doc.id, self.shots, self.seed) if self.shots else []
        if self.mode == "loglikelihood":
            shots = "".join(f"Question: {s.question}\nAnswer: {s.choices[s.gold]}\n\n" for s in examples)
            context = f"{shots}Question: {doc.question}\nAnswer:"
            return Choices(context, continuations(doc))
        return Prompt(
            query=doc.mc_question(),
            max_tokens=self.max_tokens,
            shots=tuple((s.mc_question(), " " + s.gold_letter) for s in examples),
            instruction=_INSTRUCTION if self.api == "chat" else "",
            stop=_NEXT_QUESTION if self.api == "completions" else (),
        )

    async def score(self, doc: ArcDoc, reply: Reply) -> Scored:
        """Correctness of the chosen letter; for loglikelihood also the length-normalized choice."""
        if self.mode == "loglikelihood":
            return _score_loglikelihood(doc, reply)
        # A completion goes on with the next question after its answer: only its first line is the answer.
        text = answer_line(reply.text) if self.api == "completions" else reply.text
        letter = extract_letter(text, len(doc.choices))
        return Scored(letter, float(letter == doc.gold_letter), doc.gold_letter, {"pred": letter})

    def aggregate(self, scored: Sequence[Scored]) -> dict[str, float | None]:
        """Accuracy, macro-F1 over letters, and ``acc_norm`` for loglikelihood."""
        golds = [str(s.gold) for s in scored]
        preds = [s.fields["pred"] for s in scored]
        out: dict[str, float | None] = {
            self.primary_metric: mean([s.score for s in scored if s.score is not None]),
            "macro_f1": macro_f1(golds, preds) if scored else None,
        }
        if self.mode == "loglikelihood":
            out["acc_norm"] = mean([s.fields["acc_norm"] for s in scored])
        return out


def continuations(doc: ArcDoc) -> tuple[str, ...]:
    """What loglikelihood scores after the context: lm-eval's target delimiter (one space), then the choice."""
    return tuple(" " + text for text in doc.choices)


def _score_loglikelihood(doc: ArcDoc, reply: Reply) -> Scored:
    logprobs = reply.choice_logprobs
    best = max(range(len(logprobs)), key=lambda i: logprobs[i])
    # lm-eval's acc_norm: the sum over len(choice) in characters, without the delimiter's space it scored
    normed = [lp / len(text) for lp, text in zip(logprobs, doc.choices, strict=True)]
    best_norm = max(range(len(normed)), key=lambda i: normed[i])
    return Scored(
        LETTERS[best],
        float(best == doc.gold),
        doc.gold_letter,
        {"pred": LETTERS[best], "pred_norm": LETTERS[best_norm], "acc_norm": float(best_norm == doc.gold),
         "logprobs": list(logprobs)},
    )
