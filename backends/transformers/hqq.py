"""HQQ at load: every linear layer but ``lm_head`` becomes an ``hqq`` ``HQQLinear`` (data-free, like bnb).

transformers 5.17 accepts ``HqqConfig`` but cannot quantize with it while loading (its HQQ quantizer has no
``get_quantize_ops``: "QuantizationMethod.HQQ is not available yet"), so the engine loads the weights as usual
and swaps the layers itself, with the per-layer settings ``HqqConfig`` builds. An ``hqq`` checkpoint made by
``bench quantize`` is the source's files (linked) plus :data:`HQQ_FILE`, which says how many bits.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

HQQ_FILE = "hqq_config.json"
log = logging.getLogger(__name__)


def read_hqq_config(folder: Path) -> dict[str, Any]:
    """The ``{"nbits", "group_size", "skip_modules"}`` an hqq checkpoint asks for."""
    file = folder / HQQ_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{folder} is not an hqq checkpoint: it has no {HQQ_FILE} "
                                "(make one with bench quantize --to hqq-4bit or hqq-8bit)")
    return dict(json.loads(file.read_text()))


def quantize_hqq(model: Any, settings: dict[str, Any], compute_dtype: Any, device: Any) -> Any:
    """Replace ``model``'s linear layers (all but ``settings["skip_modules"]``) by ``HQQLinear`` in place."""
    import torch
    from hqq.core.quantize import HQQLinear
    from transformers import HqqConfig

    config = HqqConfig(nbits=int(settings["nbits"]), group_size=int(settings["group_size"]))
    skip = tuple(settings.get("skip_modules", ["lm_head"]))
    start = time.monotonic()
    for name, module in list(model.named_modules()):
        if not isinstance(module, torch.nn.Linear) or name.split(".")[-1] in skip or name in skip:
            continue
        parent_name, _, child = name.rpartition(".")
        layer = HQQLinear(module, quant_config=config.quant_config, compute_dtype=compute_dtype, device=str(device),
                          del_orig=True)
        setattr(model.get_submodule(parent_name) if parent_name else model, child, layer)
    log.info("HQQ %s-bit quantized the model at load in %.1fs", settings["nbits"], time.monotonic() - start)
    return model
