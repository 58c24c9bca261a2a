"""Numeric answer extraction for math tasks (pure functions).

The order of preference for a model's output: the last ``\\boxed{...}``, then the number stated after
the last ``####`` or the last "answer is" (the last number of that sentence), then the last number
anywhere.
A number may carry thousands separators (``1,234``, ``1{,}234``, ``10,\\!080``, ``1\\,000``), a sign,
decimals, an exponent (``2.5e3``, ``10^{3}``, ``2.5 \\times 10^3``), a percent sign, a currency sign or a
unit after it; ``\\frac{a}{b}``, ``\\dfrac{a}{b}``, ``a/b`` and mixed numbers (``3 1/2``) are fractions.
Gold answers are parsed strictly: the whole string must be one number (:func:`parse_gold`).
"""

from __future__ import annotations

import math
import re

# A minus sign counts only where it cannot be subtraction ("5-3" is 5 and 3).
_SIGN = r"(?:(?<![\w)}])-)?"
_NUM = rf"{_SIGN}(?:(?:\d{{1,3}}(?:,\d{{3}})+|\d+)(?:\.\d+)?|\.\d+)(?:[eE][+-]?\d+)?"


def _power(name: str) -> str:
    """``^{-3}``, ``^3`` or ``^12`` (plain text means all the digits), the exponent in group ``name``."""
    return rf"\s*\^\s*(?:\{{\s*(?P<{name}>-?\d+)\s*\}}|(?P<{name}_bare>\d+))"


_NUMBER = re.compile(
    "|".join(
        [
            rf"(?P<fsign>-?)\\[dt]?frac\{{\s*(?P<fnum>{_NUM})\s*\}}\{{\s*(?P<fden>{_NUM})\s*\}}",
            r"(?P<ssign>-?)\\[dt]?frac(?P<snum>\d)(?P<sden>\d)",  # \frac12
            rf"(?P<whole>{_SIGN}\d+)[ \t]+(?P<mnum>\d+)\s*/\s*(?P<mden>\d+)(?!\.?\d)",  # 3 1/2
            rf"(?P<mant>{_NUM})\s*\\(?:times|cdot)\s*10{_power('texp')}",  # 2.5 \times 10^{3}
            rf"(?P<base>{_NUM}){_power('exp')}",  # 10^{3}
            rf"(?P<num>{_NUM})\s*/\s*(?P<den>{_NUM})",  # a/b
            rf"(?P<plain>{_NUM})",
        ]
    )
)
# Thin spaces that separate thousands (``1\,000``, ``1 000`` with U+2009/U+202F) are dropped.
_THIN_SPACE = re.compile(r"(?<=\d)(?:\\[,;: ]|\\thinspace\s*|[\u2009\u202f])(?=\d{3}(?!\d))")
_ANSWER_IS = re.compile(r"answer\s+is\s*:?", re.IGNORECASE)
_SENTENCE_END = re.compile(r"\.\s|\n")
# Wrappers and units that may surround a gold answer and do not change its value. Whitespace goes too,
# except between two digits, where it may be the gap of a mixed number ("3 1/2").
_GOLD_NOISE = re.compile(
    r"\\text\{[^{}]*\}|\\mbox\{[^{}]*\}|\\(?:left|right|!|,|;|\s)|\^\{?\\circ\}?|\\%|%|\\\$|\$"
    r"|(?<!\d)\s+|\s+(?!\d)"
)


def _normalize(text: str) -> str:
    """LaTeX spacing inside numbers removed: ``1{,}000`` is ``1,000``, ``\\!`` and thin spaces go."""
    return _THIN_SPACE.sub("", text.replace("{,}", ",").replace("\\!", ""))


def _to_float(token: str) -> float:
    return float(token.replace(",", ""))


def _ratio(num: str, den: str) -> float | None:
    denominator = _to_float(den)
    return _to_float(num) / denominator if denominator != 0 else None


def _signed(sign: str, value: float | None) -> float | None:
    return None if value is None else (-value if sign else value)


def _mixed(whole: str, num: str, den: str) -> float | None:
    """``3 1/2`` is 3.5; with an improper fraction (``3 4/2``) the two are separate numbers: the fraction."""
    fraction = _ratio(num, den)
    if fraction is None or int(num) >= int(den):
        return fraction
    value = abs(int(whole)) + fraction
    return -value if whole.startswith("-") else value


def _raised(base: str, exponent: str) -> float | None:
    """``base ** exponent`` with the sign outside (``-2^2`` is -4); None when it overflows."""
    value = _to_float(base)
    try:
        result = abs(value) ** int(exponent)
    except (OverflowError, ZeroDivisionError):
        return None
    return -result if value < 0 else result


def _match_value(match: re.Match[str]) -> float | None:
    g = match.groupdict()
    if g["fnum"] is not None:
        return _signed(g["fsign"], _ratio(g["fnum"], g["fden"]))
    if g["snum"] is not None:
        return _signed(g["ssign"], _ratio(g["snum"], g["sden"]))
    if g["whole"] is not None:
        return _mixed(g["whole"], g["mnum"], g["mden"])
    if g["mant"] is not None:
        scale = _raised("10", g["texp"] or g["texp_bare"])
        return None if scale is None else _to_float(g["mant"]) * scale
    if g["base"] is not None:
        return _raised(g["base"], g["exp"] or g["exp_bare"])
    if g["num"] is not None:
        return _ratio(g["num"], g["den"])
    return _to_float(g["plain"])


def _values(text: str) -> list[float]:
    """Every number in ``text``, in order."""
    values = (_match_value(match) for match in _NUMBER.finditer(_normalize(text)))
    return [value for value in values if value is not None]


def _answer(value: float) -> float | None:
    """A number as an answer: one past a float's range (a run-on string of digits) is no answer, not infinity."""
    return value if math.isfinite(value) else None


def last_number(text: str) -> float | None:
    """The value of the last number (or fraction) in ``text``; ``None`` when there is none."""
    found = _values(text)
    return _answer(found[-1]) if found else None


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
    found = _values(text)
    return _answer(found[0]) if found else None


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
    cleaned = _GOLD_NOISE.sub("", _normalize(answer.strip()))
    boxed = last_boxed(cleaned)
    if boxed is not None:
        cleaned = boxed
    match = _NUMBER.fullmatch(cleaned)
    return _match_value(match) if match else None


def numbers_equal(pred: float, gold: float) -> bool:
    """Exact match of two numeric answers, allowing only float round-off."""
    return abs(pred - gold) <= 1e-9 * max(1.0, abs(gold))
