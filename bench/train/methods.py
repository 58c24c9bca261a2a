"""Turn a loaded base model into what one method trains: peft adapters, QLoRA, or torchao fake-quant QAT.

Imported only by the ``bench train`` command (it imports torch and peft).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from bench.train.config import TrainSpec

# QAT trains against the scheme that the ``torchao-int8`` format applies at load time:
# torchao's Int8DynamicActivationInt8WeightConfig (per-token int8 activations, per-channel int8 weights).
QAT_SCHEME = "Int8DynamicActivationInt8WeightConfig"


class MethodError(RuntimeError):
    """The method cannot run here (e.g. a missing package); the message says what to do."""


def load_base(path: Path, spec: TrainSpec, device: torch.device) -> Any:
    """The base model in float32 (bf16 on CUDA); 4-bit NF4 through bitsandbytes for QLoRA."""
    from transformers import AutoModelForCausalLM

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    kwargs: dict[str, Any] = {"dtype": dtype}
    if spec.method == "qlora":
        kwargs.update(quantization_config=_nf4_config(dtype), device_map=str(device))
    model = AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    return model if spec.method == "qlora" else model.to(device)  # type: ignore[arg-type]


def _nf4_config(compute_dtype: torch.dtype) -> Any:
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as exc:
        raise MethodError("QLoRA needs bitsandbytes: pip install 'servebench[train]'") from exc
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(  # type: ignore[no-untyped-call]
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute_dtype)


def peft_config(spec: TrainSpec) -> Any:
    """The peft config of an adapter method (lora, dora, qlora, vera)."""
    from peft import LoraConfig, VeraConfig

    targets = list(spec.target_modules)
    if spec.method == "vera":
        return VeraConfig(r=spec.lora_rank(), target_modules=targets, vera_dropout=0.0, task_type="CAUSAL_LM",
                          projection_prng_key=spec.seed)
    return LoraConfig(r=spec.lora_rank(), lora_alpha=spec.lora_alpha(), target_modules=targets,
                      lora_dropout=0.0, use_dora=spec.method == "dora", task_type="CAUSAL_LM")


def _qat_config(step: str) -> Any:
    from torchao.quantization.qat import IntxFakeQuantizeConfig, QATConfig

    if step == "convert":  # without a base config, convert only swaps the fake-quantized modules back
        return QATConfig(step="convert")
    # torchao's QAT has no symmetric per-token fake quantizer; asymmetric int8 is at least as fine-grained.
    activations = IntxFakeQuantizeConfig(torch.int8, "per_token", is_symmetric=False)
    weights = IntxFakeQuantizeConfig(torch.int8, "per_channel", is_symmetric=True)
    return QATConfig(activation_config=activations, weight_config=weights, step=step)


def _not_lm_head(module: torch.nn.Module, fqn: str) -> bool:
    # The output head is tied to the embeddings and stays dense at load time too.
    return isinstance(module, torch.nn.Linear) and not fqn.endswith("lm_head")


def prepare_for_training(model: Any, spec: TrainSpec) -> Any:
    """Wrap ``model`` for ``spec.method``; full fine-tuning returns it unchanged."""
    if spec.method == "full":
        return model
    if spec.method == "qat":
        from torchao.quantization import quantize_

        quantize_(model, _qat_config("prepare"), filter_fn=_not_lm_head)
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    if spec.method == "qlora":
        model = prepare_model_for_kbit_training(  # type: ignore[no-untyped-call]
            model, use_gradient_checkpointing=False)
    return get_peft_model(model, peft_config(spec))


def finish_qat(model: Any) -> Any:
    """Swap the fake-quantized linears back to plain ones (the trained float weights stay)."""
    from torchao.quantization import quantize_

    quantize_(model, _qat_config("convert"), filter_fn=None)
    return model


def merged_model(trained: Any, spec: TrainSpec, base_path: Path, adapter_dir: Path) -> Any:
    """The plain model to save: the adapter merged into a full-precision base, or the trained model."""
    if spec.method == "full":
        return trained
    if spec.method == "qat":
        return finish_qat(trained)
    if spec.method == "qlora":
        # Merging into NF4 weights would round the update away: merge into the bf16 base instead.
        from peft import PeftModel
        from transformers import AutoModelForCausalLM

        base = AutoModelForCausalLM.from_pretrained(str(base_path), dtype=torch.float32)
        return PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    return trained.merge_and_unload()
