"""models.yaml validation, the backend registry, and the shared option vocabulary."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from backends import registry as backends
from backends.base import EngineOptions
from backends.checkpoints import ModelEntry, RegistryError, append_entry, load_registry
from backends.errors import MissingExtraError, UnknownBackendError, UnsupportedOptionError
from bench.cli import build_app


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "models.yaml"
    path.write_text(text)
    return path


BASE = """default: m
models:
  - name: m
    format: gguf
    path: {path}
"""


def test_repository_registry_is_valid_and_default_is_bundled() -> None:
    reg = load_registry()
    entry = reg.get(reg.default)
    assert entry.name == "smollm2-135m-instruct" and entry.format == "gguf"
    assert reg.path_of(entry.name).stat().st_size > 50_000_000
    assert {e.name for e in reg.derived(entry.name)} >= {
        "smollm2-135m-instruct-hf", "smollm2-135m-instruct-f16", "smollm2-135m-instruct-q8_0",
        "smollm2-135m-instruct-q4_k_m"}
    assert all(e.recipe for e in reg.derived(entry.name))


def test_unknown_key_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.format(path="x.gguf") + "    quantisation: q4\n")
    with pytest.raises(RegistryError, match=r"unknown key 'models\.0\.quantisation'"):
        load_registry(path)


def test_bad_format_and_missing_location(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="format"):
        load_registry(write(tmp_path, "default: m\nmodels:\n  - {name: m, format: safetensors, path: x}\n"))
    with pytest.raises(RegistryError, match="exactly one of 'path', 'package' or 'hub'"):
        load_registry(write(tmp_path, "default: m\nmodels:\n  - {name: m, format: hf}\n"))


def test_bad_path_says_which(tmp_path: Path) -> None:
    reg = load_registry(write(tmp_path, BASE.format(path="nowhere.gguf")))
    with pytest.raises(RegistryError, match=r"path .*nowhere.gguf does not exist"):
        reg.path_of("m")


def test_unprepared_derived_entry_says_how_to_make_it(tmp_path: Path) -> None:
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    text = BASE.format(path="x.gguf") + (
        "  - {name: d, format: hf, path: '{cache}/nope', derived_from: m,"
        " recipe: {tool: bench models prepare, step: gguf-dequantize}}\n"
        "  - {name: q, format: gptq, path: '{cache}/gone', derived_from: m, recipe: {tool: bench quantize}}\n")
    reg = load_registry(write(tmp_path, text))
    assert reg.path_of("m") == tmp_path / "x.gguf"
    with pytest.raises(RegistryError, match="bench models prepare m"):
        reg.path_of("d")
    with pytest.raises(RegistryError, match="made from 'm' by `bench quantize`"):
        reg.path_of("q")


def test_unknown_model_suggests_a_close_name() -> None:
    with pytest.raises(RegistryError, match="Did you mean 'smollm2-135m-instruct'"):
        load_registry().get("smollm2-135m-instuct")


def test_append_entry_round_trips_and_refuses_conflicts(tmp_path: Path) -> None:
    path = write(tmp_path, BASE.format(path="x.gguf"))
    entry = ModelEntry(name="n", format="hf", path="out", derived_from="m", recipe={"tool": "test"})
    reg = append_entry(entry, path)
    assert reg.get("n") == entry
    assert append_entry(entry, path).get("n") == entry  # identical: no-op
    with pytest.raises(RegistryError, match="already exists"):
        append_entry(entry.model_copy(update={"path": "other"}), path)


def test_unknown_backend_gets_did_you_mean() -> None:
    with pytest.raises(UnknownBackendError, match="Did you mean 'transformers'"):
        backends.entry("transformer")


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = backends.BackendEntry("fake", "engine", "backends.transformers.config", "not_installed_pkg.x:Y", "fakeextra")
    monkeypatch.setattr(backends, "BACKENDS", {"fake": fake})
    with pytest.raises(MissingExtraError, match=r"pip install 'servebench\[fakeextra\]'"):
        backends.load_class("fake")


def test_options_vocabulary_validates() -> None:
    assert EngineOptions(speculative="draft:smollm2").speculative_target == "smollm2"
    with pytest.raises(ValidationError):
        EngineOptions(speculative="medusa")
    with pytest.raises(ValidationError):
        EngineOptions(kv_cache_dtype="int3")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        EngineOptions(unknown_flag=True)  # type: ignore[call-arg]


@pytest.mark.parametrize(("options", "needle"), [
    (EngineOptions(kv_cache_dtype="fp8"), "kv_cache_dtype='fp8'"),
    (EngineOptions(speculative="ngram"), "speculative='ngram'"),
    (EngineOptions(prefix_caching=True), "prefix_caching=True"),
    (EngineOptions(tensor_parallel_size=2), "parallelism"),
])
def test_transformers_refuses_what_it_cannot_do(options: EngineOptions, needle: str) -> None:
    with pytest.raises(UnsupportedOptionError, match=needle):
        backends.validate("transformers", options, "hf")
    with pytest.raises(UnsupportedOptionError, match="format='exl2'"):
        backends.validate("transformers", EngineOptions(), "exl2")


def test_cli_serve_refuses_unsupported_option_before_loading() -> None:
    result = CliRunner().invoke(build_app(), ["serve", "--backend", "transformers", "--kv-cache-dtype", "fp8"])
    assert result.exit_code == 2
    assert "does not support kv_cache_dtype='fp8'" in result.output


def test_cli_models_list_and_show() -> None:
    runner = CliRunner()
    listed = runner.invoke(build_app(), ["models", "list"], env={"COLUMNS": "250"})
    assert listed.exit_code == 0 and "smollm2-135m-instruct" in listed.output
    shown = runner.invoke(build_app(), ["models", "show", "smollm2-135m-instruct-q8_0"])
    assert shown.exit_code == 0 and "llama_model_quantize" in shown.output and "resolved_path" in shown.output
    bad = runner.invoke(build_app(), ["models", "show", "nope"])
    assert bad.exit_code == 2 and "unknown model 'nope'" in bad.output


def test_bench_backends_prints_every_engine_with_availability_and_notes() -> None:
    from typer.testing import CliRunner

    from bench.cli import build_app

    result = CliRunner().invoke(build_app(), ["backends"], env={"COLUMNS": "400"})
    assert result.exit_code == 0, result.output
    rows = {line.split("│")[1].strip(): line for line in result.output.splitlines() if line.count("│") > 5}
    for name in backends.names():
        caps = backends.capabilities(name)
        reason = backends.availability(name)
        assert all(fmt in rows[name] for fmt in caps.formats), rows[name]
        assert ("yes" if reason is None else reason[:30]) in rows[name]
        assert f"{name}: {caps.notes[:40]}" in " ".join(result.output.split())
