"""AWQ's clip search as a float32 matmul, for GPTQModel's CPU runs.

GPTQModel's ``AWQProcessor._compute_best_clip`` scores each candidate clip by ``(x * w_q).sum(-1)``: a broadcast
product of ``out_rows x tokens x in_features`` elements, materialized and summed once per grid step. On CPU that is
most of an AWQ run: profiled with py-spy on a 2-core AVX2 EPYC (bundled model, 2 calibration texts), 153 s of
the quantization worker's 230 s. The same sums are a per-group matmul, which BLAS does in milliseconds.

:func:`clip_search_by_matmul` swaps that one method in while it is active. The search is unchanged: the same token
subsample, the same 10 shrink steps, the same candidates (``max * (1 - i/20)`` in the weight's dtype), the same
pseudo-quantizer and the same mean squared error over tokens; only the error is computed in float32 rather than
rounded to the weight's bf16 at every product.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# The GPTQModel whose ``_compute_best_clip`` signature and return shape this replacement matches.
PATCHED_VERSION = "7.6.0"


def _group_outputs(x: Any, w: Any) -> Any:
    """``[groups, tokens, group_size] x [rows, groups, group_size] -> [groups, tokens, rows]``: each group's
    partial output, in float32."""
    import torch

    return torch.bmm(x, w.float().permute(1, 2, 0))


def best_clip(processor: Any, w: Any, input_feat: Any, n_grid: int = 20, max_shrink: float = 0.5,
              n_sample_token: int = 512) -> Any:
    """The per-group clip bound (``[rows, groups, 1]``, ``w``'s dtype) that minimizes the mean squared error of the
    pseudo-quantized weight's outputs on ``input_feat``; GPTQModel's ``_compute_best_clip``, by matmul."""
    import torch

    with torch.inference_mode():
        group_size = processor.qcfg.group_size if processor.qcfg.group_size > 0 else w.shape[1]
        x = input_feat.reshape(-1, input_feat.shape[-1])
        x = x[:: max(1, x.shape[0] // n_sample_token)]
        x = x.to(device=w.device, dtype=torch.float32).reshape(x.shape[0], -1, group_size).transpose(0, 1)
        w = w.reshape(w.shape[0], -1, group_size)
        org_max = w.abs().amax(dim=-1, keepdim=True)
        best_max = org_max.clone()
        min_errs = torch.full(org_max.shape, float("inf"), dtype=torch.float32, device=w.device)
        org_out = _group_outputs(x, w)
        clamped, quantized = torch.empty_like(w), torch.empty_like(w)
        for step in range(int(max_shrink * n_grid)):
            max_val = org_max * (1 - step / n_grid)
            torch.clamp(w, -max_val, max_val, out=clamped)
            processor._pseudo_quantize_tensor_into(clamped, quantized)
            err = (_group_outputs(x, quantized) - org_out).pow(2).mean(dim=1).t().unsqueeze(-1)
            better = err < min_errs
            min_errs[better] = err[better]
            best_max[better] = max_val[better]
        return best_max


@contextmanager
def clip_search_by_matmul() -> Iterator[bool]:
    """While active, GPTQModel's AWQ scores clip candidates with :func:`best_clip`; yields whether it does. Another
    GPTQModel than :data:`PATCHED_VERSION`, whose method may differ, keeps its own search (with a warning)."""
    import gptqmodel
    from gptqmodel.looper.awq_processor import AWQProcessor

    if gptqmodel.__version__ != PATCHED_VERSION:
        warnings.warn(f"bench.quantize.awq_clip matches GPTQModel {PATCHED_VERSION}, not {gptqmodel.__version__}: "
                      "AWQ keeps GPTQModel's own clip search (slow on CPU)", stacklevel=3)
        yield False
        return
    original = AWQProcessor._compute_best_clip
    AWQProcessor._compute_best_clip = best_clip  # type: ignore[method-assign]
    try:
        yield True
    finally:
        AWQProcessor._compute_best_clip = original  # type: ignore[method-assign]
