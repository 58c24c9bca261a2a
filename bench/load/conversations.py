"""Multi-turn conversations: their user messages (built before the clock starts) and a growing chat history.

A :class:`Conversation` holds the user messages of one session and the reply length asked for at each turn.
Synthetic user messages have exactly ``user_tokens`` tokens (the :class:`TextBuilder` of the other
workloads); ShareGPT ones are the human turns of a recorded conversation. The first message of every
conversation starts with a unique marker, so that two sessions share no prefix beyond the chat template's
own (a prefix cache then hits only on a session's own history).

:class:`ChatHistory` is one session's history as JSON, grown by appending: each turn's request body is the
encoded messages joined, never the whole history re-encoded. :class:`TemplateCounts` counts a turn's prompt
tokens incrementally (the template's fixed tokens, plus each message's own count, taken once), so the
client never re-tokenizes a history; the one tokenizer call per turn (the reply) runs off the event loop.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.load.tokenizer import Tokenizer
from bench.load.workloads import MultiTurnWorkload, TextBuilder, iter_json_array, marker, sharegpt_file

# The tag of the marker that starts each conversation's first message.
SESSION_TAG = "Session"


@dataclass(frozen=True, slots=True)
class Conversation:
    """One session's user messages, the reply length to ask for after each, and our count of each message.

    ``user_tokens[i]`` is the tokenizer's count of ``user[i]`` alone (``None`` without a tokenizer).
    ``tag`` is set when ``user[0]`` starts with ``marker(tag, index)`` of its pool index.
    """

    user: tuple[str, ...]
    output_tokens: tuple[int, ...]
    user_tokens: tuple[int | None, ...]
    tag: str = ""

    def first_message(self, pool_index: int, session: int) -> str:
        """The first user message of ``session``: the pool conversation's, with the session's own marker."""
        if not self.tag or session == pool_index:
            return self.user[0]
        return self.user[0].replace(marker(self.tag, pool_index), marker(self.tag, session), 1)


def materialize_conversations(w: MultiTurnWorkload, count: int, builder: TextBuilder, seed: int) -> list[Conversation]:
    """``count`` conversations of ``w`` (deterministic for a seed); cycled when the source has fewer."""
    if w.source == "synthetic":
        return [_synthetic(w, i, builder, seed) for i in range(count)]
    found = list(_sharegpt_conversations(w, builder, count, seed))
    if not found:
        raise ValueError("the multi-turn sharegpt source produced no conversation of two or more turns")
    return [found[i % len(found)] for i in range(count)]


def _count(tok: Tokenizer | None, text: str) -> int | None:
    return len(tok.encode(text, add_special_tokens=False)) if tok is not None else None


def _synthetic(w: MultiTurnWorkload, i: int, builder: TextBuilder, seed: int) -> Conversation:
    rng = random.Random(f"{seed}:session:{i}")
    users = []
    for turn in range(w.turns):
        head = marker(SESSION_TAG, i) + f" turn {turn}." if turn == 0 else f"Turn {turn}."
        users.append(builder.exact(head, w.user_tokens, rng)[0])
    tag = SESSION_TAG if marker(SESSION_TAG, i) in users[0] else ""
    out = w.output_tokens or 64
    return Conversation(tuple(users), (out,) * w.turns, tuple(_count(builder.tokenizer, u) for u in users), tag)


def _sharegpt_conversations(w: MultiTurnWorkload, builder: TextBuilder, count: int,
                            seed: int) -> Iterator[Conversation]:
    tok = builder.tokenizer
    made = 0
    for rec in iter_json_array(w.path or sharegpt_file()):
        pairs = _pairs(rec)[: w.turns]
        if len(pairs) < 2:
            continue
        users = [marker(SESSION_TAG, made) + " " + pairs[0][0]] + [u for u, _ in pairs[1:]]
        outs = tuple(min(w.output_tokens or max(_count(tok, r) or 128, 4), w.max_output_tokens) for _, r in pairs)
        yield Conversation(tuple(users), outs, tuple(_count(tok, u) for u in users), SESSION_TAG)
        made += 1
        if made >= count:
            return


def _pairs(rec: Any) -> list[tuple[str, str]]:
    """(human, gpt) message pairs of a ShareGPT record, in order, up to the first one out of turn."""
    turns = rec.get("conversations") if isinstance(rec, dict) else None
    out: list[tuple[str, str]] = []
    for i in range(0, len(turns or []) - 1, 2):
        human, gpt = turns[i], turns[i + 1]  # type: ignore[index]
        if human.get("from") != "human" or gpt.get("from") != "gpt" or not human.get("value") or not gpt.get("value"):
            break
        out.append((str(human["value"]), str(gpt["value"])))
    return out


@dataclass(frozen=True, slots=True)
class TemplateCounts:
    """The chat template's own tokens: around the first user message (with the generation prompt), and for
    each later (assistant, user) pair. A turn's prompt is ``first + pairs × pair + Σ message tokens``."""

    first: int
    pair: int

    @classmethod
    def of(cls, tokenizer: Any) -> TemplateCounts | None:
        """Measured on empty messages (None: no chat template, or it fails)."""
        if not getattr(tokenizer, "chat_template", None):
            return None
        try:
            one = _template_len(tokenizer, [{"role": "user", "content": ""}])
            three = _template_len(tokenizer, [{"role": "user", "content": ""}, {"role": "assistant", "content": ""},
                                              {"role": "user", "content": ""}])
        except Exception:
            return None
        return cls(one, three - one)

    def prompt(self, pairs: int, content_tokens: int) -> int:
        """Prompt tokens of a turn after ``pairs`` earlier exchanges whose messages hold ``content_tokens``."""
        return self.first + pairs * self.pair + content_tokens


def _template_len(tokenizer: Any, messages: list[dict[str, str]]) -> int:
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return len(ids)


@dataclass(slots=True)
class ChatHistory:
    """One session's messages as encoded JSON, and our count of their tokens."""

    parts: list[bytes] = field(default_factory=list)
    content_tokens: int | None = 0  # Σ our counts of the messages (None once one is unknown)

    def add(self, role: str, content: str, tokens: int | None) -> None:
        """Append one message and its token count."""
        self.parts.append(json.dumps({"role": role, "content": content}).encode())
        self.content_tokens = None if tokens is None or self.content_tokens is None else self.content_tokens + tokens

    def body(self, frame: tuple[bytes, bytes]) -> bytes:
        """The request body holding every message so far, in ``frame`` (the request's other fields, split
        around its ``messages`` array by :func:`body_frame`)."""
        return frame[0] + b",".join(self.parts) + frame[1]

    @property
    def pairs(self) -> int:
        """Earlier (user, assistant) exchanges before the last user message."""
        return (len(self.parts) - 1) // 2


_SLOT = "__servebench_messages__"


def body_frame(body: dict[str, Any]) -> tuple[bytes, bytes]:
    """A chat request body without its messages, as the bytes before and after the messages array's items."""
    raw = json.dumps({**body, "messages": _SLOT}).encode()
    head, tail = raw.split(json.dumps(_SLOT).encode(), 1)
    return head + b"[", b"]" + tail
