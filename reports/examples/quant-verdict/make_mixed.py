"""The example's mixed-precision entry: GPTQ with the attention projections at 8 bits and the MLP at 4 bits
(issue #21: "quantize only some layers (attention vs FFN)"), from the bf16 checkpoint.

``bench quantize`` asks for mixed precision with ``--keep-bf16 PATTERN`` (bf16 per module pattern) and
``--layers-bits`` (bits per decoder-layer span); 8-bit attention is a per-module bit width, which goes through
the same plan (:class:`bench.quantize.mixed.Plan`, one precision per linear module) and the same GPTQModel run
(its per-module ``dynamic`` config). The entry's recipe lists every module under the precision it got.

    python reports/examples/quant-verdict/make_mixed.py reports/examples/quant-verdict.models.yaml
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from backends.paths import cache_dir
from bench.quantize.mixed import Plan, linear_modules, resolve
from bench.quantize.run import _make, target
from bench.train.artifacts import check_new_name, hf_source, register

SOURCE = "smollm2-135m-instruct-hf"
NAME = f"{SOURCE}-gptq-4bit-attn8"


def main(registry_file: Path) -> None:
    registry, src = hf_source(registry_file, SOURCE)
    check_new_name(registry, NAME)
    base = resolve(linear_modules(src), 4)  # lm_head stays bf16, every other linear module 4-bit
    plan = Plan({m: 8 if ".self_attn." in m and p != "bf16" else p for m, p in base.modules.items()}, (), None)
    start = time.monotonic()
    path, recipe = _make(target("gptq-4bit"), src, cache_dir() / "models" / "quant-verdict" / "gptq-4bit-attn8",
                         NAME, 32, plan)
    recipe = {**recipe, **plan.recipe(), "attention_bits": 8, "made_by": "reports/examples/quant-verdict/make_mixed.py",
              "to": "gptq-4bit", "seconds": round(time.monotonic() - start, 1)}
    register(registry_file, name=NAME, fmt="gptq", path=path, derived_from=SOURCE, recipe=recipe,
             description=f"GPTQ (GPTQModel): attention 8-bit, MLP 4-bit, lm_head bf16; from {SOURCE}")
    print(f"{NAME}: {path}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
