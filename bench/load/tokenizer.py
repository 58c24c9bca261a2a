"""Find a tokenizer for exact prompt lengths, without importing transformers until it is needed.

Order: an explicit path or models.yaml name; the ``<model>-hf`` entry once prepared; the model's own
entry (an HF folder, or a GGUF file, whose embedded tokenizer transformers can read). When none
loads, workloads fall back to approximate lengths and say so: the server's ``usage`` stays the
authoritative count either way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    """The slice of a Hugging Face tokenizer the workloads use."""

    vocab_size: int

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]:
        """Token ids of ``text``."""
        ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str:
        """Text of ``ids``."""
        ...


def _candidates(spec: str | None, model: str) -> list[str]:
    if spec:
        return [spec]
    return [f"{model}-hf", model]


def _load_path(path: Path) -> Any:
    from transformers import AutoTokenizer

    if path.is_file() and path.suffix == ".gguf":
        return AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    return AutoTokenizer.from_pretrained(str(path))


def _resolve(name: str) -> Path | None:
    direct = Path(name).expanduser()
    if direct.exists():
        return direct
    try:
        from backends.checkpoints import load_registry

        return load_registry().with_model(name).local_path(name)  # a hub model: its cached snapshot, no download
    except Exception as exc:  # an unprepared or unknown model: try the next candidate
        log.debug("tokenizer candidate %s: %s", name, exc)
        return None


def load_tokenizer(spec: str | None, model: str) -> tuple[Tokenizer | None, str]:
    """Load the first tokenizer that works; returns ``(tokenizer or None, description)``."""
    errors: list[str] = []
    for name in _candidates(spec, model):
        path = _resolve(name)
        if path is None:
            errors.append(f"{name}: not found")
            continue
        try:
            return _load_path(path), str(path)
        except Exception as exc:
            errors.append(f"{name}: {exc}")
    if spec:
        raise ValueError(f"cannot load tokenizer {spec!r}: {'; '.join(errors)}")
    return None, "; ".join(errors)


def chat_overhead(tokenizer: Any) -> int:
    """Tokens the chat template adds around one user message (0 when there is no template)."""
    if not getattr(tokenizer, "chat_template", None):
        return 0
    try:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": ""}], add_generation_prompt=True, tokenize=True
        )
    except Exception:
        return 0
    if isinstance(ids, dict) or hasattr(ids, "input_ids"):
        ids = ids["input_ids"]
    return len(ids)


class TokenCounter:
    """``text -> number of tokens`` (no special tokens), by the tokenizer's own ``encode``.

    A worker process gets it in its :class:`bench.load.executor.Job`. Pickled, a fast tokenizer travels as the
    ``tokenizers`` Tokenizer it wraps (:class:`BackendCounter`), so the worker imports neither transformers nor,
    through it, torch: seconds per process at every point of a sweep. A tokenizer without that backend (a slow
    one) travels whole.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self._crossing: tuple[Any, ...] | None = None  # what pickles, made once for all the run's workers

    def __call__(self, text: str) -> int:
        return len(self.tokenizer.encode(text, add_special_tokens=False))

    def __reduce__(self) -> tuple[Any, ...]:
        if self._crossing is None:
            backend = getattr(self.tokenizer, "backend_tokenizer", None)
            split = bool(getattr(self.tokenizer, "split_special_tokens", False))
            self._crossing = ((TokenCounter, (self.tokenizer,)) if backend is None
                              else (BackendCounter, (backend.to_str(), split)))  # fmt: skip
        return self._crossing


class BackendCounter:
    """:class:`TokenCounter` over a fast tokenizer's ``tokenizers`` backend, set as transformers sets it to encode
    one text without special tokens (no truncation, no padding, special-token text split or not), so the counts
    are the same; built from the backend's JSON."""

    def __init__(self, spec: str, split_special_tokens: bool) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        self.spec, self.split_special_tokens = spec, split_special_tokens
        self.backend = RustTokenizer.from_str(spec)
        self.backend.no_truncation()
        self.backend.no_padding()
        self.backend.encode_special_tokens = split_special_tokens

    def __call__(self, text: str) -> int:
        return len(self.backend.encode(text, add_special_tokens=False).ids)

    def __reduce__(self) -> tuple[Any, ...]:
        return BackendCounter, (self.spec, self.split_special_tokens)


def token_counter(tokenizer: Tokenizer | None) -> TokenCounter | None:
    """``text -> number of tokens`` (no special tokens), or ``None`` without a tokenizer."""
    return None if tokenizer is None else TokenCounter(tokenizer)
