"""Locust entry point: streams chat/completion requests and reports TTFT, TPOT, ITL and E2E.

    locust -f servers/locustfile.py --host http://127.0.0.1:8000 --model smollm2-135m-instruct
    locust -f servers/locustfile.py --host URL --model NAME --headless -u 4 -t 1m --max-requests 200 \\
        --workload-config workload.yaml --records requests.jsonl

The metrics appear as request entries of type ``METRIC`` (names ``ttft``, ``tpot``, ``itl``, ``e2e``)
beside the ``POST`` entry, so the web UI, ``--csv`` and ``--json`` show them. See docs/locust.md.
"""

from __future__ import annotations

from typing import Any

from locust import events
from locust.env import Environment

from bench.load.locust import user
from bench.load.locust.user import LLMUser

__all__ = ["LLMUser"]

# locust's add_listener is untyped; the listeners below are typed.


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    user.on_init_parser(parser)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _init(environment: Environment, **kw: Any) -> None:
    user.on_init(environment, **kw)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _start(environment: Environment, **kw: Any) -> None:
    user.on_test_start(environment, **kw)


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _stop(environment: Environment, **kw: Any) -> None:
    user.on_test_stop(environment, **kw)
