"""GPTQ checkpoints with per-module precision (GPTQModel's ``dynamic``), loaded through GPTQModel's own loader.

``bench quantize --to gptq-4bit --keep-bf16 ... / --layers-bits ...`` writes GPTQModel's ``dynamic`` map into
``quantization_config``: ``-:^module$`` keeps a module in bf16, ``+:^module$: {"bits": 8}`` sets its bits.
transformers 5.17 loads GPTQ through optimum 2.3's ``GPTQQuantizer``, which has no ``dynamic`` parameter (its
``**kwargs`` swallow it): ``convert_model`` makes every linear of the decoder layers a QuantLinear of the default
bits (``hf_select_quant_linear_v2(bits=4)``, on CPU the 4-bit-only ``TorchAtenLinear``). An 8-bit module then holds
8-bit tensors in a 4-bit layer (``shape '[9, 576]' is invalid for input of size 10368`` in ``transform_cpu``) and
a kept module's bf16 ``weight`` has no QuantLinear buffer to go to, so its qweight/scales stay uninitialised
(``_build_ret_idx`` size mismatch): every request failed. ``GPTQModel.load`` reads ``dynamic`` per module
(``make_quant`` -> ``dynamic_get``), so such checkpoints are loaded with it instead.

On CPU the kernel is ``BACKEND.TORCH`` (2-8 bits; the automatic choice, ``TorchFusedLinear``, is 4-bit only) and
computes in float16 or bfloat16 only. Its per-module ``torch.compile`` of the dequantization is undone: on CPU it
compiles each layer with inductor and recompiles past dynamo's limit, which cost ~35 s at load for no gain here.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# The reason a float32 run is refused (GPTQModel's TorchLinear.SUPPORTS_DTYPES).
HALF_ONLY = ("GPTQModel's torch kernel, which serves GPTQ checkpoints with per-module bits or bf16 modules "
             "(quantization_config.dynamic), computes in float16 or bfloat16 only")


def gptq_dynamic(folder: Path) -> dict[str, Any] | None:
    """The checkpoint's per-module overrides (GPTQModel's ``dynamic``), or None where every module is alike."""
    config = folder / "config.json"
    if not config.is_file():
        return None
    quant = json.loads(config.read_text()).get("quantization_config") or {}
    dynamic = quant.get("dynamic")
    return dict(dynamic) if dynamic else None


def load_gptq_mixed(folder: Path, dtype: Any, device: Any, trust_remote_code: bool = False) -> Any:
    """The transformers model inside ``GPTQModel.load``, each module built with the bits ``dynamic`` gives it."""
    from gptqmodel import BACKEND, GPTQModel

    start = time.monotonic()
    on_cpu = str(device) == "cpu"
    wrapped = GPTQModel.load(str(folder), device=str(device), dtype=dtype, trust_remote_code=trust_remote_code,
                             backend=BACKEND.TORCH if on_cpu else BACKEND.AUTO)
    model = wrapped.model
    if on_cpu:
        for module in model.modules():  # back to the eager dequantization (see the module docstring)
            module.__dict__.pop("dequantize_weight", None)
    log.info("GPTQ with per-module precision loaded through GPTQModel in %.1fs", time.monotonic() - start)
    return model
