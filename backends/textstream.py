"""Incremental detokenization with stop strings, shared by the in-process engines.

Text is released only when it is final: not in the middle of a multi-byte character, and not a
possible beginning of a stop string.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Decode = Callable[[Sequence[int]], str]


@dataclass
class TextStream:
    """Turns a growing list of token ids into text deltas, honouring stop strings."""

    decode: Decode
    stop: tuple[str, ...] = ()
    ids: list[int] = field(default_factory=list)
    text: str = ""
    emitted: int = 0
    stopped: bool = False
    _prefix_offset: int = 0
    _read_offset: int = 0

    def push(self, token_ids: Sequence[int]) -> str:
        """Add tokens; return the text that became final (empty if none)."""
        self.ids.extend(token_ids)
        prefix = self.decode(self.ids[self._prefix_offset:self._read_offset])
        current = self.decode(self.ids[self._prefix_offset:])
        if len(current) > len(prefix) and not current.endswith("\ufffd"):
            self.text += current[len(prefix):]
            self._prefix_offset = self._read_offset
            self._read_offset = len(self.ids)
        return self._release(final=False)

    def finish(self) -> str:
        """Flush whatever is held back at the end of the stream."""
        if not self.stopped and self._read_offset < len(self.ids):
            tail = self.decode(self.ids[self._prefix_offset:])
            prefix = self.decode(self.ids[self._prefix_offset:self._read_offset])
            self.text += tail[len(prefix):]
            self._read_offset = len(self.ids)
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self.stopped:
            return ""
        hit = self._find_stop()
        if hit is not None:
            self.text = self.text[:hit]
            self.stopped = True
            return self._emit(len(self.text))
        safe = len(self.text) if final else len(self.text) - self._held_back()
        return self._emit(safe)

    def _emit(self, upto: int) -> str:
        if upto <= self.emitted:
            return ""
        delta = self.text[self.emitted:upto]
        self.emitted = upto
        return delta

    def _find_stop(self) -> int | None:
        start = max(0, self.emitted - max((len(s) for s in self.stop), default=0))
        hits = [i for s in self.stop if (i := self.text.find(s, start)) >= 0]
        return min(hits) if hits else None

    def _held_back(self) -> int:
        """Length of the longest text suffix that could still grow into a stop string."""
        best = 0
        for s in self.stop:
            for n in range(min(len(s) - 1, len(self.text)), best, -1):
                if s.startswith(self.text[-n:]):
                    best = n
                    break
        return best
