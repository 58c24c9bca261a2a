"""Pure scoring functions: SQuAD EM/F1, accuracy, macro-F1, bootstrap confidence intervals."""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = frozenset(string.punctuation)


def normalize_answer(text: str) -> str:
    """The official SQuAD normalization: lowercase, drop punctuation and articles, squeeze whitespace."""
    lowered = text.lower()
    no_punct = "".join(ch for ch in lowered if ch not in _PUNCTUATION)
    no_articles = _ARTICLES.sub(" ", no_punct)
    return " ".join(no_articles.split())


def squad_exact(prediction: str, gold: str) -> float:
    """1.0 when the normalized strings are equal."""
    return float(normalize_answer(prediction) == normalize_answer(gold))


def squad_f1(prediction: str, gold: str) -> float:
    """Token-overlap F1 of the normalized strings (SQuAD v2 rule: two empty answers match)."""
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        return float(pred_tokens == gold_tokens)
    same = sum((Counter(pred_tokens) & Counter(gold_tokens)).values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def max_over_golds(metric: Callable[[str, str], float], prediction: str, golds: Sequence[str]) -> float:
    """The best score of ``prediction`` against any of the gold answers (SQuAD's rule)."""
    return max((metric(prediction, gold) for gold in golds), default=0.0)


def macro_f1(golds: Sequence[str], preds: Sequence[str | None]) -> float:
    """Mean of the per-class F1 over the classes that occur in ``golds``.

    A prediction that is ``None`` or outside the gold classes is simply wrong: it costs recall of the
    true class and adds no class of its own.
    """
    classes = sorted(set(golds))
    if not classes:
        return 0.0
    scores = []
    for label in classes:
        true_pos = sum(1 for g, p in zip(golds, preds, strict=True) if g == label and p == label)
        pred_pos = sum(1 for p in preds if p == label)
        gold_pos = sum(1 for g in golds if g == label)
        denom = pred_pos + gold_pos
        scores.append(2 * true_pos / denom if denom else 0.0)
    return float(np.mean(scores))


def mean(values: Sequence[float]) -> float | None:
    """Arithmetic mean; ``None`` for no values."""
    return float(np.mean(values)) if len(values) else None


def bootstrap_ci(
    items: Sequence[T],
    statistic: Callable[[Sequence[T]], float | None],
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``statistic`` over ``items``; ``None`` for fewer than 2 items."""
    if len(items) < 2:
        return None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        picked = rng.integers(0, len(items), size=len(items))
        value = statistic([items[i] for i in picked])
        if value is not None:
            draws.append(value)
    if not draws:
        return None
    tail = (1.0 - level) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return float(low), float(high)


def percentiles(values: Sequence[float], points: Sequence[float] = (50, 90, 99)) -> dict[str, float]:
    """``{"mean": .., "p50": .., ...}`` of ``values``; empty for no values."""
    if not len(values):
        return {}
    out = {"mean": float(np.mean(values))}
    out.update({f"p{p:g}": float(np.percentile(values, p)) for p in points})
    return out
