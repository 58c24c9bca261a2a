"""Transformers engine: continuous batching over a left-padded KV cache, CPU or CUDA."""
