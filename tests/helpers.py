"""Helpers shared by test modules."""

from __future__ import annotations

from bench.load.config import LoadConfig


def calibration_config(url: str, **overrides: object) -> LoadConfig:
    """A load config for the calibration server: no tokenizer, no scraping, 16 tokens in and out."""
    base: dict[str, object] = {
        "url": url,
        "model": "calibration",
        "tokenizer": None,
        "scrape": False,
        "seed": 1,
        "workload": {"kind": "random", "input_tokens": 16, "output_tokens": 16},
    }
    return LoadConfig.model_validate({**base, **overrides})
