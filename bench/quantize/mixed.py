"""Mixed precision as a recipe: ``--keep-bf16 PATTERN`` and ``--layers-bits "0-3:8,4-:4"`` resolved to one precision
per linear module of the source checkpoint, so the models.yaml entry records exactly which module got what."""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Precision = Literal["bf16"] | int
LAYER = re.compile(r"\.layers\.(\d+)\.")
SPAN = re.compile(r"^\s*(\d+)\s*(?:-\s*(\d*)\s*)?:\s*(\d+)\s*$")


class MixedPrecisionError(ValueError):
    """A mixed-precision request that cannot be read, matches nothing, or that the tool cannot honour."""


@dataclass(frozen=True)
class LayerBits:
    """Weight bits for decoder layers ``first`` to ``last`` inclusive (``None``: to the end)."""

    first: int
    last: int | None
    bits: int

    def covers(self, layer: int) -> bool:
        return layer >= self.first and (self.last is None or layer <= self.last)


def parse_layers_bits(text: str) -> tuple[LayerBits, ...]:
    """``"0-3:8,4-:4"`` as spans: ``N:B`` one layer, ``N-M:B`` a range, ``N-:B`` to the last layer."""
    spans = []
    for part in text.split(","):
        found = SPAN.match(part)
        if not found:
            raise MixedPrecisionError(f"--layers-bits: cannot read {part.strip()!r} in {text!r}; write spans such "
                                      "as '0-3:8,4-:4' (N:BITS, N-M:BITS or N-:BITS)")
        first, last, bits = found.group(1), found.group(2), found.group(3)
        end = int(first) if last is None else (int(last) if last else None)
        if end is not None and end < int(first):
            raise MixedPrecisionError(f"--layers-bits: span {part.strip()!r} ends before it starts")
        spans.append(LayerBits(int(first), end, int(bits)))
    return tuple(spans)


@dataclass(frozen=True)
class Plan:
    """One precision per linear module (``"bf16"`` or weight bits), and the request it came from."""

    modules: dict[str, Precision]
    keep_bf16: tuple[str, ...]
    layers_bits: str | None

    def kept(self) -> list[str]:
        return [m for m, p in self.modules.items() if p == "bf16"]

    def bits_used(self) -> set[int]:
        return {p for p in self.modules.values() if isinstance(p, int)}

    def recipe(self, labels: dict[int, str] | None = None) -> dict[str, object]:
        """What the entry records: the request, and every module under the precision it got (``int<bits>``, or
        ``labels[bits]`` where the weights are not integers, as FP8's)."""
        by_precision: dict[str, list[str]] = {}
        for module, precision in self.modules.items():
            key = "bf16" if precision == "bf16" else (labels or {}).get(precision, f"int{precision}")
            by_precision.setdefault(key, []).append(module)
        request: dict[str, object] = {"keep_bf16": list(self.keep_bf16)}
        if self.layers_bits:
            request["layers_bits"] = self.layers_bits
        return {"mixed_precision": request, "precision": by_precision}


def linear_modules(src: Path) -> list[str]:
    """The names of the source model's ``nn.Linear`` modules (built on the meta device: no weights are read)."""
    import torch
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(str(src)))  # type: ignore[no-untyped-call]
    return [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]


def _layer_of(module: str) -> int | None:
    found = LAYER.search(f".{module}")
    return int(found.group(1)) if found else None


def resolve(modules: list[str], default_bits: int, keep_bf16: tuple[str, ...] = (),
            layers_bits: str | None = None) -> Plan:
    """Each module's precision: kept in bf16 if a pattern matches it (``fnmatch``), else its layer's span's bits,
    else ``default_bits``. ``lm_head`` stays bf16 whatever is asked (no tool here quantizes it). A pattern or a
    span that matches no module is an error."""
    spans = parse_layers_bits(layers_bits) if layers_bits else ()
    for pattern in keep_bf16:
        if not any(fnmatch.fnmatchcase(m, pattern) for m in modules):
            raise MixedPrecisionError(f"--keep-bf16 {pattern!r} matches no linear module; they are named like "
                                      f"{', '.join(modules[:3])}, ..., {modules[-1]}")
    layers = {layer for m in modules if (layer := _layer_of(m)) is not None}
    for span in spans:
        if not any(span.covers(layer) for layer in layers):
            raise MixedPrecisionError(f"--layers-bits span {span.first}-{span.last}:{span.bits} covers none of the "
                                      f"layers 0-{max(layers, default=0)}")
    plan: dict[str, Precision] = {}
    for module in modules:
        layer = _layer_of(module)
        if module == "lm_head" or any(fnmatch.fnmatchcase(module, p) for p in keep_bf16):
            plan[module] = "bf16"
            continue
        bits = next((s.bits for s in spans if layer is not None and s.covers(layer)), default_bits)
        plan[module] = bits
    return Plan(plan, tuple(keep_bf16), layers_bits)


def check_bits(plan: Plan, allowed: set[int], tool: str) -> None:
    """Refuse a plan with a bit width ``tool`` cannot write."""
    if unsupported := sorted(plan.bits_used() - allowed):
        raise MixedPrecisionError(f"{tool} cannot write {unsupported}-bit weights here; it writes "
                                  f"{sorted(allowed)}-bit")
