"""``bench quantize``: make one target from an HF checkpoint and register it in models.yaml."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backends.checkpoints import ModelEntry
from bench.quantize.mixed import MixedPrecisionError, Plan, check_bits, linear_modules, resolve
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


def _plan(spec: Target, src: Path, keep_bf16: tuple[str, ...], layers_bits: str | None) -> Plan | None:
    """The mixed-precision plan asked for, after checking that ``spec``'s tool can write it."""
    if not keep_bf16 and not layers_bits:
        return None
    if spec.tool not in ("llm-compressor", "gptqmodel", "gguf") or spec.bits is None:
        raise MixedPrecisionError(f"{spec.name} cannot keep modules in bf16 or mix bit widths: only the "
                                  "llm-compressor targets (w4a16, fp8, w8a8-*), GPTQModel's gptq-4bit/awq-4bit "
                                  "and the quantized GGUFs (gguf-q8_0, gguf-q4_k_m) do")
    if layers_bits and (spec.params.get("method") == "awq" or (spec.params.get("scheme") != "W4A16"
                        and spec.tool == "llm-compressor")):
        raise MixedPrecisionError(f"{spec.name} cannot take --layers-bits: its scheme has one bit width "
                                  "(AWQ GEMM is 4-bit only; FP8 and W8A8 quantize activations too); use gptq-4bit "
                                  "or w4a16, or only --keep-bf16")
    plan = resolve(linear_modules(src), spec.bits, keep_bf16, layers_bits)
    check_bits(plan, {4, 8}, spec.name)
    return plan


def _make(spec: Target, src: Path, out_dir: Path, name: str, samples: int,
          plan: Plan | None = None, bits: float | None = None) -> tuple[Path, dict[str, Any]]:
    """Run the tool for ``spec``; returns the artifact path and its recipe."""
    if spec.format == "hqq":
        from bench.quantize.groups import group_size_for
        from bench.quantize.hqq_checkpoint import write_hqq_checkpoint

        out = fresh_dir(out_dir)
        return out, write_hqq_checkpoint(src, out, int(spec.params["nbits"]), group_size_for(src, preferred=64))
    if spec.tool == "load-time":
        # Nothing to write: the engine quantizes the source weights as it loads them.
        return src, {"tool": "bench quantize", "load_time": True, **spec.params}
    if spec.tool == "exllama":
        from bench.quantize.exllama import convert_exllama, require_cuda

        require_cuda(spec.format)
        out = fresh_dir(out_dir)
        return out, convert_exllama(spec.format, src, out, float(spec.params["bits"] if bits is None else bits))
    out = fresh_dir(out_dir)
    if spec.tool == "gguf":
        from bench.quantize.gguf import quantize_to_gguf

        artifact = out / f"{name}.gguf"
        return artifact, quantize_to_gguf(src, artifact, spec.params, plan)
    if spec.tool == "gptqmodel":
        from bench.quantize.gptq import quantize_gptqmodel

        return out, quantize_gptqmodel(src, out, spec.params["method"], samples=samples, plan=plan)
    from bench.quantize.llmc import quantize_llmc

    return out, quantize_llmc(src, out, spec.params, samples=samples, plan=plan)


def quantize(model: str, to: str, registry_file: Path | None = None, *, name: str | None = None,
             output_dir: Path | None = None, samples: int = 32, keep_bf16: tuple[str, ...] = (),
             layers_bits: str | None = None, bits: float | None = None) -> QuantizeResult:
    """Make ``to`` from the HF checkpoint ``model`` and append its entry to models.yaml.

    ``keep_bf16`` (module name patterns) and ``layers_bits`` (``"0-3:8,4-:4"``) ask for mixed precision; the
    entry's recipe then lists every linear module under the precision it got. ``bits`` is the bits per weight of
    an EXL2/EXL3 target (default 4.0); the other targets fix theirs."""
    spec = target(to)
    _check_bits(spec, bits)
    if spec.gpu_only:
        from bench.quantize.exllama import ExllamaError, require_cuda

        try:
            require_cuda(spec.format)
        except ExllamaError as exc:
            raise QuantizeError(str(exc)) from None
    registry, src = hf_source(registry_file, model)
    entry_name = name or (f"{model}-{to}-{bits}bpw" if bits is not None else f"{model}-{to}")
    check_new_name(registry, entry_name)
    try:
        plan = _plan(spec, src, tuple(keep_bf16), layers_bits)
    except MixedPrecisionError as exc:
        raise QuantizeError(str(exc)) from None
    start = time.monotonic()
    path, recipe = _make(spec, src, output_dir or default_output_dir("quantized", entry_name), entry_name, samples,
                         plan, bits)
    seconds = time.monotonic() - start
    labels = {8: "fp8"} if spec.params.get("scheme") == "FP8_DYNAMIC" else None
    recipe = {**recipe, **(plan.recipe(labels) if plan else {}), "to": to, "seconds": round(seconds, 1)}
    entry = register(registry_file or registry.source, name=entry_name, fmt=spec.format, path=path,
                     derived_from=model, recipe=recipe, description=describe(spec.summary, recipe, model))
    return QuantizeResult(entry, path, seconds)


def _check_bits(spec: Target, bits: float | None) -> None:
    """``--bits`` is for the EXL2/EXL3 targets only, within what their converter reaches."""
    if bits is None:
        return
    if spec.tool != "exllama":
        fixed = f"its weights are {spec.bits}-bit" if spec.bits else "its precision is fixed"
        raise QuantizeError(f"--bits applies to exl2 and exl3 only; {spec.name} takes none ({fixed}: pick "
                            "another target for another width)")
    from bench.quantize.exllama import ExllamaError, check_bits

    try:
        check_bits(spec.format, bits)
    except ExllamaError as exc:
        raise QuantizeError(str(exc)) from None


def describe(summary: str, recipe: dict[str, Any], model: str) -> str:
    """The registry entry's description: the target's summary, the bits per weight or group size the recipe used
    (an EXL2/EXL3 rate is asked for, a group follows the model's width, so the target cannot name either), and
    the source."""
    bpw = recipe.get("bits_per_weight")
    group = recipe.get("group_size")
    extra = (f", {bpw} bits per weight" if bpw else "") + (f", group size {group}" if group else "")
    return f"{summary}{extra}, from {model}"


__all__ = ["ArtifactError", "QuantizeError", "QuantizeResult", "quantize", "target"]
