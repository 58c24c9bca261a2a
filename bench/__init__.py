"""servebench: serve, load-test, evaluate and report on LLM checkpoints."""

__version__ = "0.1.0"
