"""``llama-server`` as a native server: servebench options translated into its flags.

Context sizing: one unified KV pool of ``-c = max_model_len x max_batch`` tokens shared by the ``--parallel``
slots, each slot capped at ``max_model_len`` by ``--kv-unified-per-slot``, so each request's limit is exactly
``max_model_len``. Without ``max_model_len`` each slot gets the model's training context. Not a KV stream per
slot (``--no-kv-unified``, which servebench passed before): then llama.cpp batches only sequences whose slot ids
are consecutive (``split_equal(sequential=true)`` in src/llama-kv-cache.cpp and src/llama-batch.cpp), so once
the busy slots scatter, one decode step runs as several ubatches, each with its own graph, and on the H100 TPOT
went from 2.2-2.8 ms at 4 requests to 10-15 ms at 5-8 (reports/gpu-seed-table-h100/llamacpp-batch-note.md).
"""

from __future__ import annotations

from backends.base import Capabilities, EngineOptions, ServerSpec
from backends.errors import UnsupportedOptionError
from backends.llamacpp import config
from backends.llamacpp.build import Flavor, cuda_buildable, ensure_server, server_binary
from backends.llamacpp.gguf_meta import context_length

ALL_LAYERS = "999"
NGRAM_LOOKUP = "3"  # tokens matched in the history before a draft is proposed (prompt lookup's n-gram)
PROMPT_CACHE_MIB = "8192"
# Verbosity 4 records the resolved context (KV size and dtype, flash attention, n_ctx per slot) in the run's
# log and one timing summary per request (about 25 lines a request; nothing per token).
LOG_VERBOSITY = "4"  # llama-server's default host-memory prompt cache, stated explicitly

_KV_TYPES = {"q8": "q8_0", "q4": "q4_0"}
# llama-server reads --api-key from this variable (common/arg.cpp of the vendored llama.cpp: set_env("LLAMA_API_KEY")).
# The key goes there, never on the command line, where `ps` and /proc/<pid>/cmdline show it to every user.
API_KEY_ENV = "LLAMA_API_KEY"


def _layers(flag: str, flavor: Flavor) -> list[str]:
    # A CPU build warns about any -ngl; the CUDA build (never used for device=cpu) offloads every layer.
    return [flag, ALL_LAYERS] if flavor == "cuda" else []


def _context_flags(spec: ServerSpec) -> list[str]:
    opts = spec.options
    per_slot = opts.max_model_len or context_length(spec.model_path)
    return ["--parallel", str(opts.max_batch), "--cont-batching", "--kv-unified", "--kv-unified-per-slot",
            str(per_slot), "-c", str(per_slot * opts.max_batch)]


def _kv_flags(opts: EngineOptions) -> list[str]:
    if opts.kv_cache_dtype == "auto":
        return []
    kv = _KV_TYPES[opts.kv_cache_dtype]
    # A quantized V cache only works with flash attention.
    return ["-ctk", kv, "-ctv", kv, "-fa", "on"]


def _prefix_flags(opts: EngineOptions) -> list[str]:
    # llama-server caches prompts by default; "off" must switch off both the slot cache and the RAM cache.
    if opts.prefix_caching:
        return ["--cache-prompt", "--cache-ram", PROMPT_CACHE_MIB]
    return ["--no-cache-prompt", "--cache-ram", "0"]


def _speculative_flags(spec: ServerSpec, threads: int, flavor: Flavor) -> list[str]:
    opts = spec.options
    n = str(opts.speculative_tokens)
    if opts.speculative_method == "ngram":
        return ["--spec-type", "ngram-simple", "--spec-ngram-simple-size-n", NGRAM_LOOKUP,
                "--spec-ngram-simple-size-m", n]
    if opts.speculative_method == "draft":
        if spec.draft_path is None:
            raise UnsupportedOptionError(config.NAME, "speculative", opts.speculative,
                                         "the draft model must resolve to a GGUF path in models.yaml")
        return ["--spec-type", "draft-simple", "-md", str(spec.draft_path), "--spec-draft-n-max", n,
                "--spec-draft-threads", str(threads), *_layers("--spec-draft-ngl", flavor)]
    return []


class LlamaServerLauncher:
    """Starts ``llama-server`` (built once from llama-cpp-python's vendored llama.cpp) for a GGUF model."""

    name = config.NAME
    capabilities: Capabilities = config.CAPABILITIES

    def __init__(self, cuda: bool | None = None) -> None:
        """``cuda`` overrides detection (nvcc on PATH and a CUDA device for torch)."""
        self._cuda = cuda

    def flavor(self, options: EngineOptions) -> Flavor:
        """Which build serves these options: ``cuda`` when asked for or available, else ``cpu``."""
        if options.device == "cpu":
            return "cpu"
        if self._cuda is None:
            self._cuda = cuda_buildable()
        if options.device == "cuda" and not self._cuda:
            raise UnsupportedOptionError(config.NAME, "device", "cuda", "no nvcc or no CUDA device here")
        return "cuda" if self._cuda else "cpu"

    def command(self, spec: ServerSpec) -> list[str]:
        """The ``llama-server`` command line for ``spec`` (validates first; reads only the GGUF header)."""
        opts = spec.options
        config.validate(opts, spec.model_format)
        flavor = self.flavor(opts)
        threads = opts.threads or config.default_threads()
        cmd = [str(server_binary(flavor)), "-m", str(spec.model_path), "--alias", spec.model_name,
               "--host", spec.host, "--port", str(spec.port), "--metrics", "--no-ui", "-lv", LOG_VERBOSITY,
               "--threads", str(threads), "--threads-batch", str(threads), *_layers("-ngl", flavor)]
        return (cmd + _context_flags(spec) + _kv_flags(opts) + _prefix_flags(opts)
                + _speculative_flags(spec, threads, flavor))

    def environment(self, spec: ServerSpec) -> dict[str, str]:
        """The API key, if any (:data:`API_KEY_ENV`); every other setting is on the command line, where the log
        shows it."""
        return {API_KEY_ENV: spec.api_key} if spec.api_key else {}

    def prepare(self, spec: ServerSpec) -> None:
        """Build ``llama-server`` for this machine on first use (minutes; later calls return at once)."""
        config.validate(spec.options, spec.model_format)
        ensure_server(self.flavor(spec.options), progress=lambda msg: print(f"[llamacpp] {msg}", flush=True))
