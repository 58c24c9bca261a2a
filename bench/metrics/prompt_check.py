"""Does the server count our prompts as we do? Our tokenizer's count against the server's ``usage.prompt_tokens``.

A load generator that tokenizes with another tokenizer (or another chat template) than the server's sends
prompts of other lengths than it reports; peers have shipped exactly that bug (sglang #25315, guidellm #75).
``bench load`` builds its prompts to exact lengths with the model's tokenizer, chat template included, and
this check compares that count with the server's on the first requests.
"""

from __future__ import annotations

from collections.abc import Sequence

from pydantic import BaseModel, ConfigDict

from bench.load.records import RequestRecord

TOLERANCE = 0.02  # a request whose counts differ by more than this share of the server's count is a mismatch
CHECKED_REQUESTS = 16  # the first requests (by index) that have both counts


class PromptTokenCheck(BaseModel):
    """Our count of the first requests' prompts against the server's, and the verdict."""

    model_config = ConfigDict(frozen=True)

    checked: int
    ours: int
    server: int
    max_diff_fraction: float
    mismatch: bool

    def describe(self) -> str:
        """One sentence for a warning."""
        return (f"our tokenizer counted {self.ours} prompt tokens over the first {self.checked} requests and the "
                f"server counted {self.server} (the worst request off by {self.max_diff_fraction:.0%}): the "
                "prompts' lengths are not what the server sees. Give bench load the server's tokenizer "
                "(--tokenizer), or check its chat template")


def _counts(record: RequestRecord) -> tuple[int, int] | None:
    """(our count, the server's) of a successful request that has both."""
    if not record.ok or record.counted_input_tokens is None or record.prompt_tokens is None:
        return None
    return record.counted_input_tokens, record.prompt_tokens


def prompt_token_check(records: Sequence[RequestRecord]) -> PromptTokenCheck | None:
    """The check over the first :data:`CHECKED_REQUESTS` successful requests with both counts (None: none has).

    Our count exists only where the tokenizer made the prompt exact (``counted_input_tokens``); the server's
    is its ``usage.prompt_tokens``.
    """
    found = (_counts(r) for r in sorted(records, key=lambda r: r.index))
    pairs = [pair for pair in found if pair is not None][:CHECKED_REQUESTS]
    if not pairs:
        return None
    worst = max(abs(server - ours) / max(server, 1) for ours, server in pairs)
    return PromptTokenCheck(checked=len(pairs), ours=sum(ours for ours, _ in pairs),
                            server=sum(server for _, server in pairs), max_diff_fraction=worst,
                            mismatch=worst > TOLERANCE)
