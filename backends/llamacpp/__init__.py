"""llama.cpp: the GGUF engine (llama-server launched natively, sources from llama-cpp-python's sdist)."""
