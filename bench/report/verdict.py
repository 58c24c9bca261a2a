"""The verdict column (issue #21): each quantized entry against the entry it was made from, on each eval task.

A *quantized entry* is a models.yaml entry with ``derived_from``; ``bench run`` records each served model's
lineage in ``run.yaml`` (``models``, and ``resumes[].models`` for cells a resume added). For every eval of such
an entry the report finds the *source cell*: the same eval (scenario, task, mode) of the ``derived_from`` model
under the same seed, on the same engine and option set where there is one, else on the same engine, else on
another engine (said in the table: then the difference holds the engines' difference too).

The two cells' per-document scores (``samples.jsonl``) are paired on the document id, and the change is
``mean(quantized - source)`` over the documents both scored. Its 95% interval is one for *paired* data, so it
reflects how much the two models *disagree*, not how hard the documents are:

- binary scores (every score 0 or 1: ARC accuracy, GSM8K exact match, HumanEval pass@1): Newcombe's hybrid
  score interval for the difference of paired proportions (Newcombe 1998, method 10): the Wilson score
  intervals of the two models' accuracies, combined with the phi correlation of the 2x2 table of paired
  answers (corrected by N/2 towards 0, as in the paper). A paired bootstrap would not do here: when few answers
  change (1 of 80, a gain) every resample shows no loss, and the interval ends at 0, so it cannot show a loss
  it never saw; the score interval still allows the losses that so few documents cannot rule out.
- continuous scores (SQuAD F1): a paired t-interval on the per-document differences (mean +- t(0.975, n-1) *
  sd / sqrt(n)), cut where the quantized mean would leave [0, 1] (a relative change below -100%: no verdict
  for a target under 100% changes). F1 differences take many values, and the t-interval is symmetric about
  the mean, so it does not end at 0 on the side that no resample reached, as a percentile bootstrap of few
  distinct differences does.

The relative interval is the change's interval divided by the source's mean score. The per-document score is
the task's accuracy: ARC accuracy, SQuAD F1, GSM8K exact match (the absolute difference has no scale a "3% drop"
could apply to), HumanEval pass@1.

The verdict compares the interval with the matrix's :class:`~bench.run.schema.QualityTarget`: *within target*
when the whole interval lies above ``-max_drop``, *beyond target* when it lies wholly below, *inconclusive*
when it straddles it (more documents would decide).

The same comparison, against the matrix's ``quality_reference`` instead of ``derived_from``
(:func:`reference_rows`): every eval of every other format, a model or an option set that quantizes at load
(``quantization: fp8`` on the bf16 checkpoint), against the reference's eval served without load-time
quantization. The references are bf16 models in order of preference (the HF checkpoint, then the GGUF F16 that
holds the same weights for llama.cpp); the match tries the same engine and options (the option set itself, or
the same options apart from ``quantization``: vLLM's ``gpu-fp8`` against its ``gpu``), then the same engine,
then another engine, and within each of these the references in their order. Both tables pair, bound and judge
a change through one function, :func:`compare_cell`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np

from backends import archived
from backends.base import EngineOptions
from bench.evals.runner import SAMPLES_FILE
from bench.report.tables import CellKey
from bench.run.results import CELL_FILE, EvalResult, ModelLineage, RunFile, read_cell_file
from bench.run.schema import QualityTarget

# The per-document field a task's verdict compares, where it is not the sample's own score.
VERDICT_FIELD: dict[str, str] = {"math-absdiff": "exact_match"}
VERDICT_METRIC: dict[str, str] = {"math-absdiff": "exact_match", "arc-easy": "acc", "arc-challenge": "acc",
                                  "squad": "F1", "humaneval": "pass@1"}
NO_SOURCE = "no source cell in this run"


@dataclass(frozen=True)
class EvalCell(CellKey):
    """One eval of one cell (its :class:`CellKey` and the eval), with where its per-document scores are."""

    scenario: str
    task: str
    mode: str
    samples: Path
    rss_peak_gib: float | None
    engine_options: EngineOptions | None = field(default=None, compare=False)
    config: dict[str, object] = field(default_factory=dict, compare=False)  # the eval's recorded EvalConfig

    def same_eval(self, other: EvalCell) -> bool:
        """The same eval (scenario, task, mode) under the same seed, in the same run."""
        return (self.scenario, self.task, self.mode, self.seed, self.run) == \
            (other.scenario, other.task, other.mode, other.seed, other.run)

    @property
    def quantization(self) -> str | None:
        """The option set's load-time quantization (``fp8``), or None."""
        return self.engine_options.quantization if self.engine_options else None


@dataclass(frozen=True)
class PairedChange:
    """Quantized against source on the documents both scored; ``change`` > 0 means the quantized one is better."""

    n: int
    source_mean: float
    quant_mean: float
    change: float
    change_ci: tuple[float, float] | None
    relative: float | None  # change / source_mean (None when the source scored 0)
    relative_ci: tuple[float, float] | None


def paired_change(source: Sequence[float], quant: Sequence[float]) -> PairedChange | None:
    """The mean paired difference ``quant - source`` and its 95% interval (see the module docstring: Newcombe's
    hybrid score interval for binary scores, a paired t-interval otherwise), absolute and relative to the
    source's mean; the two sequences hold one document each at the same index. None without documents; no
    interval with one."""
    s, q = np.asarray(source, dtype=float), np.asarray(quant, dtype=float)
    if len(s) != len(q):
        raise ValueError(f"paired scores differ in length: {len(s)} and {len(q)}")
    if not len(s):
        return None
    base = float(s.mean())
    change = float(q.mean()) - base
    relative = change / base if base else None
    if len(s) < 2:
        return PairedChange(len(s), base, float(q.mean()), change, None, relative, None)
    binary = bool(np.isin(s, (0.0, 1.0)).all() and np.isin(q, (0.0, 1.0)).all())
    if binary:
        interval = newcombe_paired_interval(s, q)
    else:
        interval = paired_t_interval(q - s)
        if ((s >= 0) & (s <= 1) & (q >= 0) & (q <= 1)).all():  # F1: a quantized mean in [0, 1], not below -100%
            interval = (max(interval[0], -base), min(interval[1], 1 - base))
    relative_ci = (interval[0] / base, interval[1] / base) if base else None
    return PairedChange(len(s), base, float(q.mean()), change, interval, relative, relative_ci)


Z95 = NormalDist().inv_cdf(0.975)


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``successes / n``."""
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def newcombe_paired_interval(source: np.ndarray[Any, Any], quant: np.ndarray[Any, Any],
                             z: float = Z95) -> tuple[float, float]:
    """Newcombe's (1998, method 10) hybrid score interval for ``mean(quant) - mean(source)`` of paired 0/1
    scores: the Wilson intervals (l1, u1) of the quantized accuracy p1 and (l2, u2) of the source's p2, and phi,
    the correlation of the paired table [[a, b], [c, d]] (a: both right, d: both wrong, b and c: one right),
    ``max(ad - bc - n/2, 0) / sqrt(row and column totals' product)`` when ad > bc, ``(ad - bc) / ...`` otherwise,
    0 when a total is 0. Lower = (p1 - p2) - sqrt((p1-l1)^2 - 2 phi (p1-l1)(u2-p2) + (u2-p2)^2); the upper bound
    with (u1-p1) and (p2-l2)."""
    n = len(source)
    both = int(np.sum((quant == 1) & (source == 1)))
    quant_only = int(np.sum((quant == 1) & (source == 0)))
    source_only = int(np.sum((quant == 0) & (source == 1)))
    neither = n - both - quant_only - source_only
    right_q, right_s = both + quant_only, both + source_only
    p1, p2 = right_q / n, right_s / n
    l1, u1 = wilson_interval(right_q, n, z)
    l2, u2 = wilson_interval(right_s, n, z)
    totals = right_q * (n - right_q) * right_s * (n - right_s)
    cross = both * neither - quant_only * source_only
    if not totals:
        phi = 0.0
    elif cross > n / 2:
        phi = (cross - n / 2) / math.sqrt(totals)
    elif cross >= 0:
        phi = 0.0
    else:
        phi = cross / math.sqrt(totals)
    diff = p1 - p2
    low = diff - math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    high = diff + math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(low, -1.0), min(high, 1.0)


# Student's t, 97.5% quantile, for 1-30 degrees of freedom (more: the Cornish-Fisher expansion below).
_T975 = (12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
         2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
         2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272)


def t975(df: int) -> float:
    """The 97.5% quantile of Student's t with ``df`` degrees of freedom (error under 1e-5 beyond the table)."""
    if df <= len(_T975):
        return _T975[df - 1]
    z = Z95
    return (z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
            + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
            + (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / (92160 * df**4))


def paired_t_interval(differences: np.ndarray[Any, Any]) -> tuple[float, float]:
    """mean +- t(0.975, n-1) * sd / sqrt(n) of the per-document differences."""
    n = len(differences)
    mean = float(differences.mean())
    half = t975(n - 1) * float(differences.std(ddof=1)) / math.sqrt(n)
    return mean - half, mean + half


def verdict(change: PairedChange, target: QualityTarget) -> str:
    """``within target``, ``beyond target`` or ``inconclusive`` (the interval straddles the target, or there is
    none): see the module docstring."""
    interval = change.relative_ci if target.relative else change.change_ci
    if interval is None:
        return "inconclusive (no interval)" if change.relative is not None or not target.relative \
            else "inconclusive (source scores 0)"
    low, high = interval
    if low >= -target.max_drop:
        return "within target"
    if high < -target.max_drop:
        return "beyond target"
    return "inconclusive"


# ---- reading a run ------------------------------------------------------------------------------


def eval_cells(run_dir: Path, run_id: str) -> Iterator[EvalCell]:
    """Every eval result of the run's cells (ok or failed cells alike: a failed cell's finished evals count)."""
    for path in sorted((run_dir / "cells").glob(f"*/{CELL_FILE}")):
        cell = read_cell_file(path)
        for name, scenario in cell.scenarios.items():
            if isinstance(scenario, EvalResult):
                yield EvalCell(run_id, cell.cell_id, cell.backend, cell.model, cell.option_set, cell.seed, name,
                               scenario.result.task, scenario.result.mode, path.parent / name / SAMPLES_FILE,
                               cell.rss_peak_gib, cell.options, scenario.result.config)


def answered_samples(samples: Path) -> Iterator[dict[str, Any]]:
    """The samples of ``samples.jsonl`` (or its ``.gz`` twin) whose request did not fail; none when neither
    file exists."""
    if not archived.exists(samples):
        return
    for line in archived.read_bytes(samples).decode("utf-8").splitlines():
        sample = json.loads(line)
        if sample.get("error") is None:
            yield sample


def doc_scores(samples: Path, task: str) -> dict[str, float]:
    """Per document id, the score the verdict compares (see :data:`VERDICT_FIELD`); failed requests and
    unscored documents are left out, so they are never paired."""
    field = VERDICT_FIELD.get(task)
    scores: dict[str, float] = {}
    for sample in answered_samples(samples):
        value = (sample.get("fields") or {}).get(field) if field else sample.get("score")
        if value is not None:
            scores[str(sample["doc_id"])] = float(value)
    return scores


def _unquantized(options: EngineOptions | None) -> EngineOptions | None:
    return options.model_copy(update={"quantization": None}) if options else None


def _same_options(c: EvalCell, quant: EvalCell) -> bool:
    """The option set itself, or the same options apart from load-time quantization (``gpu-fp8`` and ``gpu``)."""
    return c.options == quant.options or (c.engine_options is not None
                                          and c.engine_options == _unquantized(quant.engine_options))


MATCHES: tuple[tuple[str, Callable[[EvalCell, EvalCell], bool]], ...] = (
    ("same engine/options", lambda c, q: c.backend == q.backend and c.options == q.options),
    ("same engine/options", lambda c, q: c.backend == q.backend and _same_options(c, q)),
    ("same engine", lambda c, q: c.backend == q.backend),
    ("other engine", lambda c, q: True),
)


def source_cell(quant: EvalCell, models: Sequence[str], cells: Sequence[EvalCell]) -> tuple[EvalCell, str] | None:
    """The cell to compare ``quant`` with, and how it was matched: ``same engine/options`` (the option set, or
    the same options apart from ``quantization``), ``same engine`` or ``other engine``, each tried with the
    source models in their order; None when ``cells`` hold no eval of a source with the same scenario, task,
    mode and seed."""
    same_eval = [c for c in cells if c.model in models and c.same_eval(quant) and c is not quant]
    for how, match in MATCHES:
        for model in models:
            found = [c for c in same_eval if c.model == model and match(c, quant)]
            if found:
                return found[0], how
    return None


@dataclass(frozen=True)
class VerdictRow:
    """One quantized entry on one eval task against its source."""

    quant: EvalCell
    source_model: str
    source: EvalCell | None
    matched: str
    change: PairedChange | None
    verdict: str
    weight_bytes: int | None
    source_weight_bytes: int | None
    load_time: bool  # quantized at load: no file of its own, the weights in memory are not the file's size


def verdict_rows(run_dir: Path, run_id: str, meta: RunFile | None, target: QualityTarget) -> list[VerdictRow]:
    """Every eval of every entry with a ``derived_from`` in the run's lineage, against its source cell."""
    models = meta.lineage() if meta else {}
    cells = list(eval_cells(run_dir, run_id))
    rows = [compare_cell(quant, [source], cells, target, models)
            for quant in cells if (source := (models.get(quant.model) or ModelLineage()).derived_from)]
    return _sorted(rows)


def is_reference(model: str, options: EngineOptions | None, references: Sequence[str]) -> bool:
    """A reference model served without load-time quantization (unknown options: none)."""
    return model in references and (options is None or options.quantization is None)


def reference_rows(run_dir: Path, run_id: str, meta: RunFile | None, target: QualityTarget,
                   references: Sequence[str]) -> list[VerdictRow]:
    """Every eval of every format (model and option set) that is not a reference, against the reference's same
    eval (:func:`source_cell`; the candidates are the references served without load-time quantization)."""
    if not references:
        return []
    models = meta.lineage() if meta else {}
    cells = list(eval_cells(run_dir, run_id))
    candidates = [c for c in cells if is_reference(c.model, c.engine_options, references)]
    rows = [compare_cell(quant, references, candidates, target, models)
            for quant in cells if not is_reference(quant.model, quant.engine_options, references)]
    return _sorted(rows)


def compare_cell(quant: EvalCell, sources: Sequence[str], candidates: Sequence[EvalCell], target: QualityTarget,
                 models: dict[str, ModelLineage]) -> VerdictRow:
    """One eval against its source cell among ``candidates`` (the evals a source may be matched in; see
    :func:`source_cell`): the paired change, its interval and the verdict, or why there is none (no source
    eval in the run at all, or none of this task and mode). ``models``: the run's lineage, for weight sizes."""
    entry = models.get(quant.model) or ModelLineage()
    found = source_cell(quant, sources, candidates)
    if found is None:
        ran = any(c.model in sources for c in candidates)
        verdict_text = "no source eval of this task and mode" if ran else NO_SOURCE
        return VerdictRow(quant, sources[0], None, "–", None, verdict_text, entry.weight_bytes,
                          (models.get(sources[0]) or ModelLineage()).weight_bytes, _load_time(quant, entry))
    source, matched = found
    change = compare(source, quant)
    verdict_text = verdict(change, target) if change else (
        "no document scored in both" if doc_scores(quant.samples, quant.task)
        else "no document scored: every request failed (Quality table)")
    return VerdictRow(quant, source.model, source, matched, change, verdict_text, entry.weight_bytes,
                      (models.get(source.model) or ModelLineage()).weight_bytes, _load_time(quant, entry))


def _load_time(cell: EvalCell, entry: ModelLineage) -> bool:
    """Quantized when loaded: an entry without files of its own, or an option set with ``quantization``."""
    return entry.load_time or cell.quantization is not None


def _sorted(rows: list[VerdictRow]) -> list[VerdictRow]:
    return sorted(rows, key=lambda r: (r.quant.run, r.quant.task, r.quant.scenario, r.quant.backend, r.quant.model,
                                       r.quant.seed))


def paired_scores(source: EvalCell, quant: EvalCell) -> tuple[list[float], list[float]]:
    """The two cells' scores (:func:`doc_scores`) on the documents both scored, in document-id order."""
    before, after = doc_scores(source.samples, source.task), doc_scores(quant.samples, quant.task)
    docs = sorted(before.keys() & after.keys())
    return [before[d] for d in docs], [after[d] for d in docs]


def compare(source: EvalCell, quant: EvalCell) -> PairedChange | None:
    """The paired change of ``quant`` against ``source`` over the documents both scored."""
    return paired_change(*paired_scores(source, quant))


# ---- the table ----------------------------------------------------------------------------------

# How a change, its interval and the verdict are read; both tables' notes say it.
CHANGE_NOTE = ("change = mean of the "
               "per-document differences (accuracy; SQuAD F1; GSM8K exact match), relative = change / source score, "
               "with a 95% interval for paired data: for 0/1 scores Newcombe's hybrid score interval for paired "
               "proportions (Wilson intervals and the phi correlation; Newcombe 1998, method 10), for F1 a paired "
               "t-interval on the per-document differences; the relative interval is that interval / source score. "
               "Within target: the whole interval of the targeted change lies above -max_drop; beyond: wholly "
               "below; inconclusive: it straddles the target. ")

VERDICT_HEADER = ("run", "task (metric)", "backend", "model", "derived from", "source cell", "docs paired",
                  "source", "quantized", "change (95% CI)", "relative (95% CI)", "weights MiB (× source)",
                  "peak RSS GiB", "verdict")


def verdict_table(runs: Sequence[tuple[Path, str, RunFile | None]],
                  override: Sequence[str] | None = None) -> tuple[list[list[str]], str]:
    """The rows of the verdict table for runs given as (folder, run id, run.yaml), and its note; a run's target
    is its matrix's ``quality_target`` (the default for a run from before the field, or without run.yaml). A
    run with a quality reference (:func:`run_references`) has no rows here: the reference table compares its
    formats instead, against bf16 rather than against whatever entry each was derived from."""
    rows, targets, unpaired = [], [], set()
    for run_dir, run_id, meta in runs:
        if run_references(meta, override):
            continue
        target = meta.matrix.quality_target if meta else QualityTarget()
        targets.append(f"{run_id}: {target.describe()}")
        for row in verdict_rows(run_dir, run_id, meta, target):
            if row.verdict == NO_SOURCE:  # e.g. the bf16 checkpoint, derived from the bundled GGUF, served alone
                unpaired.add(f"{row.quant.model} (from {row.source_model})")
            else:
                rows.append(_cells(row))
    note = (f"Target ({'; '.join(targets)}), the matrix's quality_target. Each quantized entry (one with "
            f"derived_from in models.yaml) against its source on the same documents: {CHANGE_NOTE}"
            "Source cell: the source's eval on the same engine and options where the run has one ('other "
            "engine': the difference also holds the engines' own). Weights: the checkpoint's files; an entry "
            "quantized at load has none of its own (its peak RSS is the measure).")
    if unpaired:
        note += f" Not compared (their source is not in the run): {', '.join(sorted(unpaired))}."
    return rows, note


REFERENCE_HEADER = ("run", "task (metric)", "backend", "model", "options", "reference", "reference cell",
                    "docs paired", "reference score", "format score", "change (95% CI)", "relative (95% CI)",
                    "weights MiB (× reference)", "peak RSS GiB", "verdict")


def run_references(meta: RunFile | None, override: Sequence[str] | None = None) -> tuple[str, ...]:
    """The reference models of a run: ``override`` (``bench report --quality-reference``) when given, else its
    matrix's ``quality_reference`` (none for a run from before the field, or without run.yaml)."""
    if override:
        return tuple(override)
    return meta.matrix.quality_reference if meta else ()


def reference_table(runs: Sequence[tuple[Path, str, RunFile | None]],
                    override: Sequence[str] | None = None) -> tuple[list[list[str]], str]:
    """The rows of the reference table (every format against the run's ``quality_reference``) and its note; no
    rows for runs without references."""
    rows, targets, unpaired = [], [], set()
    for run_dir, run_id, meta in runs:
        references = run_references(meta, override)
        if not references:
            continue
        target = meta.matrix.quality_target if meta else QualityTarget()
        targets.append(f"{run_id}: {target.describe()}, references {', '.join(references)}")
        for row in reference_rows(run_dir, run_id, meta, target, references):
            if row.verdict == NO_SOURCE:
                unpaired.add(f"{row.quant.model}/{row.quant.options}")
            else:
                rows.append(_cells(row, options=True))
    note = (f"Target ({'; '.join(targets)}): the matrix's quality_target and quality_reference. Each format (a "
            "model, or an option set that quantizes at load) against a reference model's same eval on the same "
            f"documents, the reference served without load-time quantization: {CHANGE_NOTE}"
            "Reference cell: on the same engine and options where the run has one (the same options apart from "
            "quantization count: an fp8 option set against its unquantized twin), else on the same engine, else "
            "on another ('other engine': the difference also holds the engines' own); within each, the first "
            "reference in the matrix's order.")
    if unpaired:
        note += f" No reference eval in the run for: {', '.join(sorted(unpaired))}."
    return rows, note


def _cells(r: VerdictRow, options: bool = False) -> list[str]:
    q, c = r.quant, r.change
    metric = f"{q.task} ({VERDICT_METRIC.get(q.task, 'score')})"
    if q.scenario != q.task:  # a cell's several evals of one task (squad, squad-again, squad-c1) are told apart
        metric += f", {q.scenario}"
    source = "–" if r.source is None else f"{r.source.backend}/{r.source.options} ({r.matched})"
    return [q.run, metric, q.backend, q.model, *([q.options] if options else []), r.source_model, source,
            str(c.n) if c else "–", _num(c.source_mean if c else None), _num(c.quant_mean if c else None),
            change_text(c), relative_text(c), _weights(r), _num(q.rss_peak_gib, "{:.2f}"), r.verdict]


def change_text(change: PairedChange | None) -> str:
    """The absolute change and its 95% interval, ``-0.012 (-0.030 to +0.006)``, or ``–``."""
    return _with_ci(change.change if change else None, change.change_ci if change else None, "{:+.3f}")


def relative_text(change: PairedChange | None) -> str:
    """The relative change and its 95% interval, ``-1.2% (-3.0% to +0.6%)``, or ``–``."""
    return _with_ci(change.relative if change else None, change.relative_ci if change else None, "{:+.1%}")


def _num(value: float | None, fmt: str = "{:.3f}") -> str:
    return "–" if value is None or not np.isfinite(value) else fmt.format(value)


def _with_ci(value: float | None, ci: tuple[float, float] | None, fmt: str) -> str:
    if value is None or not np.isfinite(value):
        return "–"
    if ci is None:
        return fmt.format(value)
    return f"{fmt.format(value)} ({fmt.format(ci[0])} to {fmt.format(ci[1])})"


def _weights(r: VerdictRow) -> str:
    if r.load_time:
        return "quantized at load"
    if not r.weight_bytes:
        return "–"
    mib = f"{r.weight_bytes / 2**20:,.0f}"
    return f"{mib} ({r.weight_bytes / r.source_weight_bytes:.2f}×)" if r.source_weight_bytes else mib
