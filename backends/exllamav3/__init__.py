"""ExLlamaV3 engine (CUDA only): EXL3 checkpoints over its generator."""
