"""Models by their hub name (#14), against a real huggingface_hub cache built offline from the bundled checkpoints.

The cache has huggingface_hub's own layout (``tests/hub_cache.py``) and ``HF_HUB_OFFLINE=1``, so the real
``snapshot_download`` / ``hf_hub_download`` resolve from it; nothing here reaches the network. The "no network"
case points ``HF_ENDPOINT`` at a closed port on 127.0.0.1. Only the gated / missing-revision / missing-repo
messages patch the download function, raising huggingface_hub's own exception types.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml
from typer.testing import CliRunner

from backends import hub
from backends.checkpoints import ModelEntry, Registry, RegistryError, hub_entry, load_registry
from backends.net import free_port
from bench.cli import build_app
from bench.run.executor import hub_provenance
from tests.hub_cache import COMMIT, add_repo

HF_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct"
GGUF_REPO = "servebench/SmolLM2-135M-Instruct-GGUF"  # three GGUFs: needs `file`
Q8_REPO = "servebench/SmolLM2-135M-Instruct-Q8_0-GGUF"  # one GGUF: served as is
TAG_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


@pytest.fixture(scope="module")
def hub_cache(prepared: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding the bundled model's HF folder and its GGUFs under hub repo ids."""
    cache = tmp_path_factory.mktemp("hub")
    hf = prepared.path_of("smollm2-135m-instruct-hf")
    add_repo(cache, HF_REPO, {p.name: p for p in hf.iterdir() if p.is_file()})
    add_repo(cache, HF_REPO, {"config.json": hf / "config.json"}, commit=TAG_COMMIT, ref="v1")
    ggufs = {n: prepared.path_of(f"smollm2-135m-instruct-{n}") for n in ("f16", "q8_0", "q4_k_m")}
    add_repo(cache, GGUF_REPO, {f"smollm2-135m-instruct-{n}.gguf": p for n, p in ggufs.items()})
    add_repo(cache, Q8_REPO, {"smollm2-135m-instruct-q8_0.gguf": ggufs["q8_0"]})
    return cache


@pytest.fixture
def offline(hub_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``HF_HUB_CACHE`` at the test cache, ``HF_HUB_OFFLINE=1``."""
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return hub_cache


def _snapshot(cache: Path, repo: str, commit: str = COMMIT) -> Path:
    return cache / ("models--" + repo.replace("/", "--")) / "snapshots" / commit


def test_an_unlisted_repo_id_resolves_as_a_transient_hub_entry(offline: Path, registry: Registry) -> None:
    reg = registry.with_model(HF_REPO)
    assert reg.get(HF_REPO).hub == HF_REPO and registry.with_model("smollm2-135m-instruct") is registry
    path, fmt = reg.checkpoint(HF_REPO)
    assert (path, fmt) == (_snapshot(offline, HF_REPO), "hf")
    assert reg.provenance(HF_REPO) == {"repo": HF_REPO, "revision": "main", "commit": COMMIT, "path": str(path),
                                       "format": "hf"}
    with pytest.raises(RegistryError, match="Did you mean"):
        registry.with_model("smollm2-135m-instruct-hff").get("smollm2-135m-instruct-hff")  # not a repo id


def test_a_revision_picks_its_snapshot(offline: Path) -> None:
    snap = hub_entry(HF_REPO, revision="v1").snapshot()
    assert (snap.commit, snap.path) == (TAG_COMMIT, _snapshot(offline, HF_REPO, TAG_COMMIT))


def test_gguf_repos_need_a_file_unless_they_hold_one(offline: Path) -> None:
    one = hub_entry(Q8_REPO).snapshot()
    assert one.format == "gguf" and one.path.name == "smollm2-135m-instruct-q8_0.gguf"
    by_glob = hub_entry(GGUF_REPO, file="*q4_k_m.gguf").snapshot()
    by_name = hub_entry(GGUF_REPO, file="smollm2-135m-instruct-q4_k_m.gguf").snapshot()
    assert by_glob.path == by_name.path == _snapshot(offline, GGUF_REPO) / "smollm2-135m-instruct-q4_k_m.gguf"
    with pytest.raises(RegistryError, match=r"several GGUF files .*choose one with `file:`"):
        hub_entry(GGUF_REPO).snapshot()
    with pytest.raises(RegistryError, match="matches several files"):
        hub_entry(GGUF_REPO, file="*.gguf").snapshot()


def test_a_format_that_differs_from_the_repo_is_an_error(offline: Path) -> None:
    assert hub_entry(HF_REPO, fmt="hf").snapshot().format == "hf"
    with pytest.raises(RegistryError, match=r"says format 'gguf' but the repo's files are 'hf'"):
        hub_entry(HF_REPO, fmt="gguf").snapshot()


@pytest.mark.parametrize(("config", "extra_file", "expected"), [
    ({}, None, "hf"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, None, "gptq"),
    ({"quantization_config": {"quant_method": "awq", "bits": 4}}, None, "awq"),
    ({"quantization_config": {"quant_method": "compressed-tensors"}}, None, "compressed-tensors"),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_4bit": True}}, None, "bnb-4bit"),
    ({"quantization_config": {"quant_method": "bitsandbytes", "load_in_8bit": True}}, None, "bnb-8bit"),
    ({"quantization_config": {"quant_method": "exl3", "bits": 4.0}}, None, "exl3"),
    ({"quantization_config": {"quant_method": "exl2", "bits": 4.0}}, None, "exl2"),
    ({}, "measurement.json", "exl2"),
])
def test_format_is_read_from_the_files(tmp_path: Path, config: dict[str, object], extra_file: str | None,
                                       expected: str) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", **config}))
    if extra_file:
        (tmp_path / extra_file).write_text("{}")
    assert hub.detect_format(tmp_path) == expected


def test_an_unknown_quantization_or_no_checkpoint_is_refused(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "fp8"}}))
    with pytest.raises(hub.HubError, match="quant_method 'fp8' is not a format servebench serves"):
        hub.detect_format(tmp_path)
    with pytest.raises(hub.HubError, match=r"neither config\.json nor a GGUF"):
        hub.detect_format(tmp_path / "nothing")


@pytest.mark.parametrize(("fields", "message"), [
    ({"hub": HF_REPO, "path": "/x", "format": "hf"}, "exactly one of 'path', 'package' or 'hub'"),
    ({"path": "/x", "format": "hf", "revision": "main"}, "only apply to a 'hub' entry"),
    ({"path": "/x"}, "'format' is required"),
    ({"hub": "not-a-repo-id"}, "String should match pattern"),
])
def test_entry_validation(fields: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModelEntry(name="m", **fields)  # type: ignore[arg-type]


def test_offline_without_the_snapshot_says_so(offline: Path) -> None:
    with pytest.raises(RegistryError, match=r"Qwen/Qwen3-0.6B@main is not in the local hub cache .*HF_HUB_OFFLINE=1 "
                                            r"forbids downloading"):
        hub_entry("Qwen/Qwen3-0.6B").snapshot()
    with pytest.raises(RegistryError, match=rf"{HF_REPO}@v9 is not in the local hub cache"):
        hub_entry(HF_REPO, revision="v9").snapshot()


def _http_error(kind: type[Exception], status: int) -> Exception:
    response = httpx.Response(status, request=httpx.Request("GET", f"https://huggingface.co/{HF_REPO}"))
    return kind("from the hub", response=response)


@pytest.mark.parametrize(("error", "token", "message"), [
    ("GatedRepoError", None, r"is a gated repo: accept its terms at https://huggingface.co/.*set HF_TOKEN"),
    ("GatedRepoError", "hf_x", r"gated repo and your token has no access yet"),
    ("RevisionNotFoundError", None, r"has no revision 'main': give an existing branch, tag or commit"),
    ("RepositoryNotFoundError", None, r"no repo .* on the hub \(or it is private"),
])
def test_hub_errors_are_explained(monkeypatch: pytest.MonkeyPatch, error: str, token: str | None,
                                  message: str) -> None:
    """Only the message mapping: huggingface_hub's exception types raised from a patched download."""
    from huggingface_hub import errors

    raised = _http_error(getattr(errors, error), 404 if "NotFound" in error else 403)

    def fail(*_args: object, **_kwargs: object) -> str:
        raise raised

    monkeypatch.setattr("huggingface_hub.snapshot_download", fail)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr("huggingface_hub.get_token", lambda: token)
    with pytest.raises(RegistryError, match=message) as caught:
        hub_entry(HF_REPO).snapshot()
    assert caught.value.__cause__ is not None


def _bench(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "bench", *args], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=timeout)


def test_no_network_and_no_cache_says_so(tmp_path: Path) -> None:
    """A real download attempt against a closed port on 127.0.0.1 (no hub, no network), through the CLI."""
    env = {"HF_HUB_CACHE": str(tmp_path / "empty"), "HF_ENDPOINT": f"http://127.0.0.1:{free_port()}",
           "HF_HUB_OFFLINE": "0", "HF_HUB_ETAG_TIMEOUT": "2", "HF_HUB_DOWNLOAD_TIMEOUT": "2"}
    done = _bench(["serve", "--backend", "transformers", "--model", "Qwen/Qwen3-0.6B"], env)
    assert done.returncode == 2
    text = " ".join(done.stdout.split() + done.stderr.split())
    assert "cannot reach the hub to download Qwen/Qwen3-0.6B@main, and it is not in the local hub cache" in text


def _registry_copy(tmp_path: Path) -> Path:
    path = tmp_path / "models.yaml"
    shutil.copy(load_registry().source, path)
    return path


def test_models_add_writes_hub_entries(offline: Path, tmp_path: Path) -> None:
    path = _registry_copy(tmp_path)
    runner = CliRunner()
    app = build_app()
    done = runner.invoke(app, ["models", "add", HF_REPO, "--registry", str(path)])
    assert done.exit_code == 0, done.output
    assert COMMIT in done.output
    args = ["models", "add", GGUF_REPO, "--file", "smollm2-135m-instruct-q8_0.gguf", "--registry", str(path)]
    clash = runner.invoke(app, args)  # the file's stem names a listed entry already
    assert clash.exit_code == 2 and "'smollm2-135m-instruct-q8_0' already exists" in " ".join(clash.output.split())
    done = runner.invoke(app, [*args, "--name", "hub-q8_0"])
    assert done.exit_code == 0, done.output
    written = {m["name"]: m for m in yaml.safe_load(path.read_text())["models"]}
    assert written["SmolLM2-135M-Instruct"] == {"name": "SmolLM2-135M-Instruct", "format": "hf", "hub": HF_REPO}
    assert written["hub-q8_0"] == {"name": "hub-q8_0", "format": "gguf", "hub": GGUF_REPO,
                                   "file": "smollm2-135m-instruct-q8_0.gguf"}
    reg = load_registry(path)
    assert reg.path_of("hub-q8_0") == _snapshot(offline, GGUF_REPO) / "smollm2-135m-instruct-q8_0.gguf"
    assert reg.location_of("SmolLM2-135M-Instruct") == _snapshot(offline, HF_REPO)
    again = runner.invoke(app, ["models", "add", GGUF_REPO, "--registry", str(path)])
    assert again.exit_code == 2 and "several GGUF files" in " ".join(again.output.split())  # rich wraps at any width


def test_run_yaml_records_repo_revision_and_commit(offline: Path, registry: Registry, tmp_path: Path) -> None:
    from bench.run.cells import default_matrix
    from bench.run.executor import write_run_yaml

    reg = registry.with_models([HF_REPO, "smollm2-135m-instruct"])
    found = hub_provenance(reg, [HF_REPO, "smollm2-135m-instruct", "Qwen/Qwen3-0.6B"])
    assert found[HF_REPO]["commit"] == COMMIT and "smollm2-135m-instruct" not in found
    assert "unknown model" in found["Qwen/Qwen3-0.6B"]["error"]
    write_run_yaml(tmp_path, default_matrix(registry), "r1", found)
    data = yaml.safe_load((tmp_path / "run.yaml").read_text())
    assert data["hub_models"][HF_REPO] == {"repo": HF_REPO, "revision": "main", "commit": COMMIT,
                                           "path": str(_snapshot(offline, HF_REPO)), "format": "hf"}


@pytest.fixture
def served(offline: Path, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str]]:
    """``bench serve --backend B --model REPO`` from the offline cache; yields (base URL, its output, REPO)."""
    backend, repo = request.param
    port = free_port()
    log = tmp_path / "serve.log"
    cmd = [sys.executable, "-m", "bench", "serve", "--backend", backend, "--model", repo, "--port", str(port),
           "--max-model-len", "512", "--max-batch", "1"]
    with log.open("w") as out:
        # its own session: whatever it started goes with it below (one CI run found its llama-server left running)
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ),
                                start_new_session=True)
    try:
        _wait_healthy(proc, f"http://127.0.0.1:{port}", log)
        yield f"http://127.0.0.1:{port}/v1", str(log), repo
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group bench serve led: only processes this test started


def _wait_healthy(proc: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bench serve exited with {proc.returncode}: {log.read_text()[-3000:]}")
        try:
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"never healthy: {log.read_text()[-3000:]}")


@pytest.mark.parametrize("served", [("transformers", HF_REPO), ("llamacpp", Q8_REPO)], indirect=True,
                         ids=["transformers-hf", "llamacpp-gguf"])
def test_bench_serve_a_repo_id_from_the_offline_cache(served: tuple[str, str, str]) -> None:
    from openai import OpenAI

    url, log, repo = served
    client = OpenAI(base_url=url, api_key="unused")
    assert [m.id for m in client.models.list().data] == [repo]
    reply = client.completions.create(model=repo, prompt="The capital of France is", temperature=0, max_tokens=8)
    assert "Paris" in reply.choices[0].text
    text = " ".join(Path(log).read_text().split())
    assert f"{repo}: hub {repo} revision main commit {COMMIT}" in text


def test_quantize_takes_a_repo_id_and_registers_it_as_the_source(offline: Path, tmp_path: Path) -> None:
    """``bench quantize --model ORG/NAME``: the hub entry is written first, so the new one can derive from it."""
    path = _registry_copy(tmp_path)
    done = _bench(["quantize", "--model", HF_REPO, "--to", "gguf-q8_0", "--name", "hub-made-q8_0",
                   "--output-dir", str(tmp_path / "out"), "--registry", str(path)], {}, timeout=400)
    assert done.returncode == 0, done.stdout + done.stderr
    reg = load_registry(path)
    assert reg.get(HF_REPO).hub == HF_REPO
    made = reg.get("hub-made-q8_0")
    assert (made.format, made.derived_from) == ("gguf", HF_REPO) and reg.path_of("hub-made-q8_0").is_file()


def test_remote_code_needs_the_entry_and_the_flag(offline: Path, registry: Registry) -> None:
    from backends.base import EngineOptions
    from backends.vllm import flags
    from servers.launch import NativeServerOptionError, _serve_command, build_spec
    from servers.settings import ServerSettings

    allowed = hub_entry(HF_REPO, name="remote-ok").model_copy(update={"trust_remote_code": True})
    reg = registry.model_copy(update={"models": (*registry.models, allowed, hub_entry(Q8_REPO, name="q8"))})
    options = EngineOptions()
    assert not build_spec(reg, "transformers", "remote-ok", options).trust_remote_code  # the entry alone: no
    spec = build_spec(reg, "transformers", "remote-ok", options, trust_remote_code=True)
    assert spec.trust_remote_code
    settings = ServerSettings(served_model_name="remote-ok")
    assert "--trust-remote-code" in _serve_command(spec, settings, reg.source)
    assert "--trust-remote-code" in flags.server_args(spec, "cpu")
    assert "--trust-remote-code" not in flags.server_args(build_spec(reg, "transformers", "remote-ok", options), "cpu")
    with pytest.raises(RegistryError, match=r"does not allow it: add `trust_remote_code: true`"):
        build_spec(reg.with_model(HF_REPO), "transformers", HF_REPO, options, trust_remote_code=True)
    q8 = allowed.model_copy(update={"name": "q8-remote", "hub": Q8_REPO})
    with pytest.raises(NativeServerOptionError, match="cannot run a checkpoint's own code"):
        build_spec(reg.model_copy(update={"models": (*reg.models, q8)}), "llamacpp", "q8-remote", options,
                   trust_remote_code=True)


def test_serve_refuses_remote_code_the_entry_does_not_allow(offline: Path) -> None:
    done = CliRunner().invoke(build_app(), ["serve", "--model", HF_REPO, "--trust-remote-code"])
    assert done.exit_code == 2 and "does not allow it" in " ".join(done.output.split())


def test_matrix_expansion_downloads_nothing(offline: Path, registry: Registry) -> None:
    """``bench run --dry-run`` lists hub cells without fetching: a cached snapshot's format is checked now, one not
    downloaded yet when its cell starts (offline, a fetch of Qwen3 would fail and skip its cells)."""
    from bench.run.cells import default_matrix, expand

    models = (HF_REPO, "Qwen/Qwen3-0.6B")
    matrix = default_matrix(registry).model_copy(update={"models": models, "backends": ("transformers", "llamacpp")})
    reasons = {(c.backend, c.model): c.skip_reason for c in expand(matrix, registry.with_models(models))}
    assert reasons[("transformers", HF_REPO)] is None
    assert "hf" in (reasons[("llamacpp", HF_REPO)] or "")  # llama.cpp serves GGUF only: known from the cache
    assert reasons[("transformers", "Qwen/Qwen3-0.6B")] is None
    assert reasons[("llamacpp", "Qwen/Qwen3-0.6B")] is None


def test_the_seed_plan_expands_offline_without_downloading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """benchmarks/seed-plan.yaml over benchmarks/seed-models.yaml: valid, and its dry run touches no hub."""
    from bench.run.cells import expand
    from bench.run.schema import load_matrix

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = Path(__file__).resolve().parent.parent / "benchmarks"
    reg = load_registry(root / "seed-models.yaml")
    matrix = load_matrix(root / "seed-plan.yaml")
    cells = expand(matrix, reg.with_models(matrix.models))
    assert len(cells) == len(matrix.models) * len(matrix.backends) == 45
    skipped = {(c.backend, c.model): c.skip_reason or "" for c in cells}
    assert "format='awq'" in skipped[("llamacpp", "qwen3-8b-awq")]
    assert not (tmp_path / "empty").exists()  # nothing was fetched


def test_bench_load_finds_a_served_hub_models_tokenizer_and_size_in_the_cache(offline: Path,
                                                                               prepared: Registry) -> None:
    """``bench load --model ORG/NAME`` counts tokens with the cached snapshot's tokenizer (never downloads one)."""
    from backends.checkpoints import model_bytes_of
    from bench.load.tokenizer import load_tokenizer

    tokenizer, where = load_tokenizer(None, HF_REPO)
    assert tokenizer is not None and where == str(_snapshot(offline, HF_REPO))
    weights = prepared.path_of("smollm2-135m-instruct-hf") / "model.safetensors"
    assert model_bytes_of(HF_REPO) == weights.stat().st_size
    assert model_bytes_of("Qwen/Qwen3-0.6B") is None  # not cached here: unknown, not fetched
    assert load_tokenizer(None, "Qwen/Qwen3-0.6B")[0] is None


def test_vllm_asks_for_a_tokenizer_beside_a_hub_gguf(offline: Path, registry: Registry) -> None:
    """vLLM (GPU) serves a GGUF with an HF tokenizer: a bare --model ORG/NAME GGUF is told to name one."""
    from backends.base import EngineOptions, ServerSpec
    from backends.vllm.launcher import GgufTokenizerError, VllmLauncher

    path, fmt = registry.with_model(Q8_REPO).checkpoint(Q8_REPO)
    spec = ServerSpec(backend="vllm", model_name=Q8_REPO, model_path=path, options=EngineOptions(), model_format=fmt)
    with pytest.raises(GgufTokenizerError, match=r"set `tokenizer:` in models\.yaml"):
        VllmLauncher(registry).command(spec)
