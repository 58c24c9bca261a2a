"""Which endpoint errors end a ``bench eval`` run at once (pure): only those every other request would repeat.

Against the real llama-server (which ignores ``echo``), the run and the CLI are tested in
``tests/test_llamacpp_server.py``.
"""

from __future__ import annotations

from bench.evals.client import EchoIgnoredError, LogprobsError
from bench.evals.runner import unsupported_reason
from bench.evals.tasks.base import Choices, Prompt


class _StatusError(Exception):
    """The two attributes of ``openai.APIStatusError`` the runner reads (newer llama-server's 400 to echo)."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(f"Error code: {status_code} - {message}")
        self.status_code = status_code
        self.body = {"code": status_code, "message": message, "type": "invalid_request_error"}


def _bad_request(message: str) -> _StatusError:
    return _StatusError(400, message)


def test_only_an_echo_refusal_of_a_loglikelihood_request_stops_the_run() -> None:
    choices = Choices(context="Q?\nAnswer:", continuations=(" a", " b"))
    prompt = Prompt(query="Q?", max_tokens=4)
    reason = unsupported_reason(_bad_request("Only no echo is supported"), choices)
    assert reason is not None and "Only no echo is supported" in reason
    assert unsupported_reason(_bad_request("Only no echo is supported"), prompt) is None  # no echo sent
    assert unsupported_reason(_bad_request("prompt is too long"), choices) is None  # one sample's problem
    assert unsupported_reason(RuntimeError("echo"), choices) is None  # not an HTTP 400
    assert unsupported_reason(_StatusError(404, "echo"), choices) is None
    ignored = unsupported_reason(EchoIgnoredError("no logprobs"), choices)  # the llama-server we build
    assert ignored is not None and "ignores echo=true" in ignored
    assert unsupported_reason(LogprobsError("no token starts inside the context"), choices) is None
