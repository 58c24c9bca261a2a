"""``bench quantize``: make one target from an HF checkpoint and register it in models.yaml."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.checkpoints import ModelEntry
from bench.quantize.targets import TARGETS, Target
from bench.train.artifacts import (
    ArtifactError,
    check_new_name,
    default_output_dir,
    fresh_dir,
    hf_source,
    register,
)


class QuantizeError(RuntimeError):
    """The target cannot be made here, or making it failed."""


@dataclass(frozen=True)
class QuantizeResult:
    """What a run wrote."""

    entry: ModelEntry
    path: Path
    seconds: float


def target(name: str) -> Target:
    """The target called ``name``; an unknown one lists the valid names."""
    if name not in TARGETS:
        raise QuantizeError(f"unknown quantization target {name!r}; choose one of: {', '.join(TARGETS)}")
    return TARGETS[name]


def _make(spec: Target, src: Path, out_dir: Path, name: str, samples: int) -> tuple[Path, dict[str, Any]]:
    """Run the tool for ``spec``; returns the artifact path and its recipe."""
    if spec.tool == "load-time":
        # Nothing to write: the engine quantizes the source weights as it loads them.
        return src, {"tool": "bench quantize", "load_time": True, **spec.params}
    if spec.tool == "exllama":
        from bench.quantize.exllama import convert_exllama, require_cuda

        require_cuda(spec.format)
        out = fresh_dir(out_dir)
        return out, convert_exllama(spec.format, src, out, float(spec.params["bits"]))
    out = fresh_dir(out_dir)
    if spec.tool == "gguf":
        from bench.quantize.gguf import quantize_to_gguf

        artifact = out / f"{name}.gguf"
        return artifact, quantize_to_gguf(src, artifact, spec.params)
    if spec.tool == "gptqmodel":
        from bench.quantize.gptq import quantize_gptqmodel

        return out, quantize_gptqmodel(src, out, spec.params["method"], samples=samples)
    from bench.quantize.llmc import quantize_llmc

    return out, quantize_llmc(src, out, spec.params["scheme"], spec.params["algorithm"], samples=samples)


def quantize(model: str, to: str, registry_file: Path | None = None, *, name: str | None = None,
             output_dir: Path | None = None, samples: int = 32) -> QuantizeResult:
    """Make ``to`` from the HF checkpoint ``model`` and append its entry to models.yaml."""
    spec = target(to)
    if spec.gpu_only:
        from bench.quantize.exllama import ExllamaError, require_cuda

        try:
            require_cuda(spec.format)
        except ExllamaError as exc:
            raise QuantizeError(str(exc)) from None
    registry, src = hf_source(registry_file, model)
    entry_name = name or f"{model}-{to}"
    check_new_name(registry, entry_name)
    start = time.monotonic()
    path, recipe = _make(spec, src, output_dir or default_output_dir("quantized", entry_name), entry_name, samples)
    seconds = time.monotonic() - start
    recipe = {**recipe, "to": to, "seconds": round(seconds, 1)}
    entry = register(registry_file or registry.source, name=entry_name, fmt=spec.format, path=path,
                     derived_from=model, recipe=recipe, description=f"{spec.summary}, from {model}")
    return QuantizeResult(entry, path, seconds)


__all__ = ["ArtifactError", "QuantizeError", "QuantizeResult", "quantize", "target"]
