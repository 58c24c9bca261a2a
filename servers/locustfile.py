"""Locust entry point: streams chat/completion requests and reports TTFT, TPOT, ITL and E2E.

    locust -f servers/locustfile.py --host http://127.0.0.1:8000 --model smollm2-135m-instruct
    locust -f servers/locustfile.py --host http://127.0.0.1:8000   # model: the first of GET /v1/models
    locust -f servers/locustfile.py --host URL --model NAME --headless -u 4 -t 1m --max-requests 200 \\
        --workload-config workload.yaml --records requests.jsonl

The metrics appear as request entries of type ``METRIC`` (names ``ttft``, ``tpot``, ``itl``, ``e2e``)
beside the ``POST`` entry, so the web UI, ``--csv`` and ``--json`` show them. See docs/locust.md.
"""

from __future__ import annotations

import logging
from typing import Any

import gevent
from locust import events
from locust.env import Environment

from bench.load.locust import user
from bench.load.locust.settings import fill_model
from bench.load.locust.user import LLMUser

__all__ = ["LLMUser"]

log = logging.getLogger("servebench.locust")

# locust's add_listener is untyped; the listeners below are typed.


@events.init_command_line_parser.add_listener  # type: ignore[untyped-decorator]
def _arguments(parser: Any) -> None:
    user.on_init_parser(parser)


@events.init.add_listener  # type: ignore[untyped-decorator]
def _init(environment: Environment, **kw: Any) -> None:
    user.on_init(environment, **kw)


@events.test_start.add_listener  # type: ignore[untyped-decorator]
def _start(environment: Environment, **kw: Any) -> None:
    if _model_known(environment):
        user.on_test_start(environment, **kw)


def _model_known(environment: Environment) -> bool:
    """Fill in ``--model`` from ``GET /v1/models`` where it was not given; on failure, end the test.

    The master (or a lone process) asks; workers get the name with the master's options.
    """
    options = environment.parsed_options
    if options is None:
        return True
    try:
        found = fill_model(options, environment.host or options.host)
    except RuntimeError as exc:
        log.error("%s", exc)
        environment.process_exit_code = 1
        gevent.spawn(_end, environment)  # not in this greenlet: stopping the runner kills its users
        return False
    if found is not None:
        log.warning("no --model given: using %r, the first model of %s/v1/models", found, environment.host)
    return True


def _end(environment: Environment) -> None:
    runner, options = environment.runner, environment.parsed_options
    if runner is not None and options is not None and options.headless:
        runner.quit()
    elif runner is not None:
        runner.stop()


@events.test_stop.add_listener  # type: ignore[untyped-decorator]
def _stop(environment: Environment, **kw: Any) -> None:
    user.on_test_stop(environment, **kw)
