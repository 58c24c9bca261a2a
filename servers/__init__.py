"""The OpenAI-compatible server (FastAPI) and the launchers of native servers."""
