"""Numeric answer extraction for math tasks (pure functions).

The order of preference for a model's output: the last ``\\boxed{...}``, then the number stated after
the last ``####`` or the last "answer is" (the last number of that sentence), then the last number
anywhere.
A number may carry thousands separators (``1,234``), a sign, decimals, a percent sign, a currency sign
or a unit after it; ``\\frac{a}{b}``, ``\\dfrac{a}{b}`` and ``a/b`` are fractions.
Gold answers are parsed strictly: the whole string must be one number (:func:`parse_gold`).
"""

from __future__ import annotations

import re

# A minus sign counts only where it cannot be subtraction ("5-3" is 5 and 3).
_SIGN = r"(?:(?<![\w)}])-)?"
_NUM = rf"{_SIGN}(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?|{_SIGN}\.\d+"
_LATEX_FRAC = rf"(-?)\\[dt]?frac\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}"
_LATEX_FRAC_SHORT = r"(-?)\\[dt]?frac(\d)(\d)"  # \frac12
_SLASH_FRAC = rf"({_NUM})\s*/\s*({_NUM})"
_ANY_NUMBER = re.compile(rf"{_LATEX_FRAC}|{_LATEX_FRAC_SHORT}|{_SLASH_FRAC}|({_NUM})")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s|\n")
# Wrappers and units that may surround a gold answer and do not change its value.
_GOLD_NOISE = re.compile(
    r"\\text\{[^{}]*\}|\\mbox\{[^{}]*\}|\\(?:left|right|!|,|;|\s)|\^\{?\\circ\}?|\\%|%|\\\$|\$|\s+"
)


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def _match_value(match: re.Match[str]) -> float | None:
    groups = match.groups()
    if groups[1] is not None or groups[4] is not None:  # \frac{a}{b} or \frac12
        sign, num, den = groups[0:3] if groups[1] is not None else groups[3:6]
        value = _to_float(num) / _to_float(den) if _to_float(den) != 0 else None
        return None if value is None else (-value if sign else value)
    if groups[6] is not None:  # a/b
        den = _to_float(groups[7])
        return _to_float(groups[6]) / den if den != 0 else None
    return _to_float(groups[8])


def last_number(text: str) -> float | None:
    """The value of the last number (or fraction) in ``text``; ``None`` when there is none."""
    values = [_match_value(match) for match in _ANY_NUMBER.finditer(text)]
    found = [value for value in values if value is not None]
    return found[-1] if found else None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}``), braces balanced; ``None`` if absent."""
    start = max(text.rfind("\\boxed{"), text.rfind("\\fbox{"))
    if start < 0:
        return None
    open_at = text.index("{", start)
    depth = 0
    for index in range(open_at, len(text)):
        depth += {"{": 1, "}": -1}.get(text[index], 0)
        if depth == 0:
            return text[open_at + 1 : index]
    return None  # unbalanced: the generation was cut off inside the box


def _stated_number(text: str) -> float | None:
    """The number a marker introduces: the last one of its sentence ("is 2 * 30 = 60."), else the next."""
    sentence = _SENTENCE_END.split(text.strip(), maxsplit=1)[0]
    value = last_number(sentence)
    if value is not None:
        return value
    for match in _ANY_NUMBER.finditer(text):
        value = _match_value(match)
        if value is not None:
            return value
    return None


def extract_number(text: str) -> float | None:
    """The numeric answer in a model's output; ``None`` when it holds no number.

    After a marker (``####``, "answer is") the last number of the marker's sentence counts, because
    small models keep generating past their answer; inside ``\\boxed{}`` and in unmarked text the
    last number does.
    """
    boxed = last_boxed(text)
    if boxed is not None and last_number(boxed) is not None:
        return last_number(boxed)
    for marker in ("####", *(m.group(0) for m in reversed(list(_ANSWER_IS.finditer(text))))):
        if marker in text:
            value = _stated_number(text.rsplit(marker, 1)[1])
            if value is not None:
                return value
    return last_number(text)


def parse_gold(answer: str) -> float | None:
    """A gold answer's value when the *whole* answer is one number (units/``$``/``%`` allowed)."""
    cleaned = _GOLD_NOISE.sub("", answer.strip())
    boxed = last_boxed(cleaned)
    if boxed is not None:
        cleaned = boxed
    match = _ANY_NUMBER.fullmatch(cleaned)
    return _match_value(match) if match else None


def numbers_equal(pred: float, gold: float) -> bool:
    """Exact match of two numeric answers, allowing only float round-off."""
    return abs(pred - gold) <= 1e-9 * max(1.0, abs(gold))
