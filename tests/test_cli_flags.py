"""Flags generated from the pydantic models: each shows its model's default, and one not given leaves it to the
model (or to ``--config``'s file)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import typer
from pydantic import BaseModel

from backends.base import EngineOptions
from bench.cli import build_app
from bench.flags import Flag, deep_merge, nest
from bench.load.cli import LOAD_FLAGS, SWEEP_FLAGS, load_config
from bench.load.config import LoadConfig, SweepSpec
from bench.load.workloads import RandomWorkload, SharedPrefixWorkload
from bench.metrics import GOODPUT_TARGET
from bench.serve_cli import ENGINE_FLAGS

URL = {"url": "http://127.0.0.1:9", "model": "m"}


def _params(name: str) -> dict[str, Any]:
    group: Any = typer.main.get_command(build_app())
    return {p.name: p for p in group.commands[name].params if p.name}


def _shown(value: Any) -> str | bool:
    if value is None:
        return False
    return str(value).lower() if isinstance(value, bool) else str(getattr(value, "value", value))


def _field_default(model: type[BaseModel], flag: Flag) -> Any:
    return model.model_fields[flag.path[-1]].get_default(call_default_factory=True)


@pytest.mark.parametrize(("command", "model", "flags"), [
    ("serve", EngineOptions, ENGINE_FLAGS),
    ("sweep", SweepSpec, [f for f in SWEEP_FLAGS if f.path[0] == "sweep"]),
    ("load", LoadConfig, [f for f in LOAD_FLAGS if len(f.path) == 1 and f.param not in ("url", "model")]),
])
def test_a_generated_flag_shows_its_models_default_and_defaults_to_not_given(
        command: str, model: type[BaseModel], flags: list[Flag]) -> None:
    params = _params(command)
    assert flags
    for f in flags:
        param = params[f.param]
        assert param.default is None, f.param  # not given: the model decides
        assert param.show_default == _shown(_field_default(model, f)), f.param


def test_serve_generates_every_engine_option_but_quantization() -> None:
    assert {f.path[0] for f in ENGINE_FLAGS} == set(EngineOptions.model_fields) - {"quantization"}
    params = _params("serve")
    assert params["prefix_caching"].opts == ["--prefix-caching"] and params["prefix_caching"].secondary_opts
    assert EngineOptions.model_validate(nest(ENGINE_FLAGS, {})) == EngineOptions()
    assert EngineOptions.model_validate(nest(ENGINE_FLAGS, {"max_batch": 3})).max_batch == 3


def test_load_flags_keep_their_names_and_fill_the_nested_models() -> None:
    names = {opt for p in _params("load").values() for opt in p.opts}
    for old in ("--url", "--model", "--api", "--workload", "--input-tokens", "--output-tokens", "--prefix-tokens",
                "--suffix-tokens", "--num-prefixes", "--dataset-path", "--concurrency", "--rate", "--arrival",
                "--burstiness", "--max-concurrency", "--num-requests", "--duration", "--warmup", "--seed",
                "--slo-ttft-ms", "--slo-tpot-ms", "--slo-e2e-ms", "--tokenizer", "--ignore-eos",
                "--logprobs-token-count", "--workers", "--scrape", "--api-key", "--request-timeout", "--config",
                "--gpu-peak-bandwidth-gbs", "--server-gpus", "--engine", "--out"):
        assert old in names, old
    assert load_config(dict(URL)) == LoadConfig(**URL)  # nothing given: the model's defaults
    cfg = load_config({**URL, "arrival": {"rate": 4.0, "kind": "gamma", "burstiness": 0.5}, "duration_s": 5.0})
    assert (cfg.arrival.kind, cfg.num_requests, cfg.duration_s) == ("gamma", None, 5.0)
    shared = load_config({**URL, "workload": {"kind": "shared-prefix", "num_prefixes": 3}})
    assert shared.workload == SharedPrefixWorkload(num_prefixes=3)
    assert load_config({**URL, "workload": {"input_tokens": 7}}).workload == RandomWorkload(input_tokens=7)
    with pytest.raises(typer.BadParameter, match="not both"):
        load_config({**URL, "arrival": {"n": 2, "rate": 1.0}})


def test_a_flag_given_overrides_only_its_own_field_of_the_file() -> None:
    file = {**URL, "workload": {"kind": "random", "input_tokens": 16, "output_tokens": 6},
            "arrival": {"kind": "gamma", "rate": 2.0, "burstiness": 0.5}}
    cfg = load_config({"workload": {"output_tokens": 4}, "arrival": {"rate": 3.0}}, file)
    assert cfg.workload == RandomWorkload(input_tokens=16, output_tokens=4)
    assert (cfg.arrival.kind, cfg.arrival.rate) == ("gamma", 3.0)  # type: ignore[union-attr]
    assert load_config({"arrival": {"n": 2}}, file).arrival.kind == "concurrency"  # another kind replaces it
    assert deep_merge({"a": {"kind": "x", "b": 1}}, {"a": {"kind": "y"}}) == {"a": {"kind": "y"}}


def test_the_goodput_target_is_one_constant() -> None:
    assert SweepSpec().goodput_target == GOODPUT_TARGET
    assert _params("sweep")["goodput_target"].show_default == str(GOODPUT_TARGET)


def test_bench_eval_flags_come_from_eval_config() -> None:
    from bench.evals.cli import EVAL_FLAGS
    from bench.evals.config import EvalConfig

    params = _params("eval")
    for f in EVAL_FLAGS:
        default = EvalConfig.model_fields[f.param].get_default()
        assert params[f.param].show_default == (False if f.param in ("url", "model", "task") else _shown(default))
    assert params["chat"].opts == ["--chat"] and params["chat"].secondary_opts == ["--completion"]


def test_an_eval_scenario_inherits_bench_evals_options() -> None:
    from bench.evals.config import EvalOptions
    from bench.run.schema import EvalScenario

    assert set(EvalOptions.model_fields) <= set(EvalScenario.model_fields)
    for name, info in EvalOptions.model_fields.items():
        if name != "limit":  # the matrix's default follows the resolved mode (200, or 500 for ARC loglikelihood)
            mine = EvalScenario.model_fields[name]
            assert (mine.annotation, mine.default, mine.description) == (info.annotation, info.default,
                                                                         info.description), name
    assert EvalScenario(task="squad").eval_config("http://h", "m", 0).limit == 200


def test_the_old_api_spelling_still_reads_as_completions() -> None:
    from bench.evals.config import EvalConfig
    from bench.run.executor import read_run_matrix
    from bench.run.schema import EvalScenario

    with pytest.warns(FutureWarning, match="api: completions"):
        assert EvalScenario(task="squad", api="completion").api == "completions"  # type: ignore[arg-type]
    with pytest.warns(FutureWarning):
        assert EvalConfig(url="u", model="m", task="squad", api="completion").api == "completions"  # type: ignore[arg-type]
    with pytest.warns(FutureWarning):  # a run.yaml written with the old spelling (the example's, before it was rerun)
        matrix = read_run_matrix(Path(__file__).resolve().parent / "data" / "run-before-schema-changes")
    assert {s.api for s in matrix.scenarios if s.kind == "eval"} == {"completions"}
