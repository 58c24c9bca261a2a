"""ExLlamaV2 engine (CUDA only): EXL2/GPTQ/FP16 checkpoints over the dynamic generator."""
