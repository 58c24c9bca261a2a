"""Compatibility alias of :mod:`backends.prepare`, where this module moved (the shared base that ``backends``,
``servers`` and ``bench`` all import; see ``docs/architecture.md``). New code imports ``backends.prepare``."""

from backends.prepare import (
    BYTE_LEVEL_DIGITS_PRE,
    FTYPES,
    PrepareError,
    convert_hf_to_gguf,
    dequantize_gguf_to_hf,
    gguf_tokenizer_fields,
    prepare,
    quantize_gguf,
    repair_bpe_tokenizer,
)

__all__ = [
    "BYTE_LEVEL_DIGITS_PRE",
    "FTYPES",
    "PrepareError",
    "convert_hf_to_gguf",
    "dequantize_gguf_to_hf",
    "gguf_tokenizer_fields",
    "prepare",
    "quantize_gguf",
    "repair_bpe_tokenizer",
]
