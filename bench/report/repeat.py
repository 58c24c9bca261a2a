"""Repeatability: the same eval run twice in one cell, paired on documents (the report's noise floor).

Greedy decoding through an engine's endpoint is not repeatable at a concurrency above one: the batch a request
lands in changes the order of the floating-point reductions, so a few replies change from one run to the next
(batch nondeterminism). That noise is of the size of the quality differences between formats the verdict tables
judge, so the report shows it beside them.

A *repeat pair* is two eval scenarios of one cell (so the same server, model, option set and seed) that asked
the same: the same task and mode, and every field of the eval's recorded config (``result.config``: limit,
shots, api, max_tokens, math_source, seed, ...) equal except :data:`MAY_DIFFER` (named in the row: concurrency
changes the batches, so such a pair measures the batch-size noise) and :data:`SAME_SERVER` (the cell's own
endpoint). Runs reported together (``bench report RUN RUN2``) pair the same way across runs: the same cell and
scenario in each (the cell measured again, e.g. in another session). A record without its config is never
paired: nothing says its two evals asked the same.

Each pair is compared as the verdict compares a format with its source (:func:`~bench.report.verdict.compare`,
the same paired interval), the second scenario against the first, and counts the documents whose reply (the
samples' ``output``) and whose score changed.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import combinations, groupby
from pathlib import Path

from bench.report.verdict import (
    VERDICT_METRIC,
    EvalCell,
    PairedChange,
    answered_samples,
    change_text,
    eval_cells,
    paired_change,
    paired_scores,
    relative_text,
)

MAY_DIFFER: tuple[str, ...] = ("concurrency",)  # config fields a pair may differ in; the row names them
SAME_SERVER: tuple[str, ...] = ("url", "model")  # the cell's endpoint: the same server for all its scenarios
REPEAT = "nothing: a repeat"
ANOTHER_RUN = "another run"

REPEAT_HEADER = ("run", "backend", "model", "options", "seed", "task (metric)", "scenario A", "scenario B",
                 "what differs", "docs paired", "outputs differ", "scores changed", "score A", "score B",
                 "change (95% CI)", "relative (95% CI)")


@dataclass(frozen=True)
class RepeatPair:
    """Two evals of one configuration in one cell; ``change`` is B against A over the documents both scored."""

    first: EvalCell
    second: EvalCell
    differs: str
    answered: int  # documents both answered (no failed request)
    outputs_differ: int
    scores_changed: int
    change: PairedChange | None


def eval_key(cell: EvalCell) -> str | None:
    """What must be equal for two evals of a cell to pair: task, mode and the recorded config less
    :data:`MAY_DIFFER` and :data:`SAME_SERVER`, as one string; None without a recorded config."""
    if not cell.config:
        return None
    asked = {k: v for k, v in cell.config.items() if k not in MAY_DIFFER + SAME_SERVER}
    return json.dumps([cell.task, cell.mode, asked], sort_keys=True)


def differences(a: EvalCell, b: EvalCell) -> str:
    """What differs between two paired evals: ``another run``, ``concurrency 64 → 1``, or :data:`REPEAT`."""
    changed = [f"{k} {a.config.get(k)} → {b.config.get(k)}" for k in MAY_DIFFER
               if a.config.get(k) != b.config.get(k)]
    return ", ".join([ANOTHER_RUN] * (a.run != b.run) + changed) or REPEAT


def same_eval_pairs(cells: Sequence[EvalCell]) -> Iterator[tuple[EvalCell, EvalCell]]:
    """Every two evals with the same :func:`eval_key` of one cell (in the cell's scenario order), then of the same
    cell and scenario in two runs reported together (in the order the runs were given)."""
    for _, group in groupby(cells, key=lambda c: (c.run, c.cell)):
        yield from _asked_the_same(combinations(list(group), 2))
    across = sorted(cells, key=lambda c: (c.cell, c.scenario))  # stable: the runs' order within a group
    for _, group in groupby(across, key=lambda c: (c.cell, c.scenario)):
        yield from _asked_the_same((a, b) for a, b in combinations(list(group), 2) if a.run != b.run)


def _asked_the_same(pairs: Iterable[tuple[EvalCell, EvalCell]]) -> Iterator[tuple[EvalCell, EvalCell]]:
    for a, b in pairs:
        key = eval_key(a)
        if key is not None and key == eval_key(b):
            yield a, b


def doc_outputs(samples: Path) -> dict[str, str]:
    """Per document id, the reply as recorded (the sample's ``output``, as JSON: a loglikelihood eval's is a list
    of log-probabilities), for the requests that did not fail."""
    return {str(s["doc_id"]): json.dumps(s.get("output")) for s in answered_samples(samples)}


def compare_pair(a: EvalCell, b: EvalCell) -> RepeatPair:
    """Outputs and scores of ``b`` against ``a`` on the documents both answered, and the paired change."""
    before, after = doc_outputs(a.samples), doc_outputs(b.samples)
    common = before.keys() & after.keys()
    first, second = paired_scores(a, b)
    changed = sum(x != y for x, y in zip(first, second, strict=True))
    return RepeatPair(a, b, differences(a, b), len(common), sum(before[d] != after[d] for d in common), changed,
                      paired_change(first, second))


def repeat_pairs(runs: Sequence[tuple[Path, str]]) -> list[RepeatPair]:
    """Every repeat pair of the runs' cells (runs given as (folder, run id)): within a cell, and across runs."""
    cells = [cell for run_dir, run_id in runs for cell in eval_cells(run_dir, run_id)]
    pairs = [compare_pair(a, b) for a, b in same_eval_pairs(cells)]
    return sorted(pairs, key=lambda p: (p.first.run, p.first.backend, p.first.model, p.first.options,
                                        p.first.seed, p.first.task))


# ---- the table ----------------------------------------------------------------------------------

REPEAT_NOTE = ("The run-to-run noise of one configuration, to read the verdicts' changes against: two evals in "
               "one cell (same server, model, options and seed), or the same cell's scenario in two runs reported "
               "together (another run), that asked the same (task, mode, documents, "
               "shots, API, generation budget, seed: every field of the eval's recorded config but "
               "concurrency), B against A on the same documents. Greedy decoding should change nothing, but the "
               "batch a request lands in changes the floating-point reductions (batch nondeterminism), so a "
               "repeat measures that noise and a pair at another concurrency the batch-size noise. Outputs "
               "differ: documents answered in both whose reply (the samples' output) differs; scores changed: "
               "documents scored in both whose score differs. Score, change and interval as in the verdict "
               "tables (the task's own metric per document; a paired 95% interval: Newcombe's for 0/1 scores, "
               "a paired t-interval for F1). A format's change against its source or reference that this "
               "noise could make is no finding about the format.")


def repeat_table(runs: Sequence[tuple[Path, str]]) -> list[list[str]]:
    """The rows of the repeatability table for runs given as (folder, run id); none without a repeat pair."""
    return [_cells(p) for p in repeat_pairs(runs)]


def _cells(p: RepeatPair) -> list[str]:
    a, c = p.first, p.change
    metric = f"{a.task} ({VERDICT_METRIC.get(a.task, 'score')})"
    scored = c.n if c else 0
    run = a.run if a.run == p.second.run else f"{a.run} → {p.second.run}"
    return [run, a.backend, a.model, a.options, str(a.seed), metric, a.scenario, p.second.scenario, p.differs,
            str(scored), f"{p.outputs_differ} / {p.answered}", f"{p.scores_changed} / {scored}",
            _score(c.source_mean if c else None), _score(c.quant_mean if c else None), change_text(c),
            relative_text(c)]


def _score(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
