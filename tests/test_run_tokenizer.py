"""A matrix cell measures prompt lengths with the served checkpoint's own tokenizer (its registry may be a
``--registry`` file that ``bench load``'s default lookup never reads)."""

from __future__ import annotations

from pathlib import Path

from bench.run.scenarios import tokenizer_folder


def _folder(path: Path, *files: str) -> Path:
    path.mkdir(parents=True)
    for name in files:
        (path / name).write_text("{}")
    return path


def test_the_checkpoint_folder_with_tokenizer_files_is_used(tmp_path: Path) -> None:
    model = _folder(tmp_path / "w8a8", "config.json", "tokenizer.json")
    assert tokenizer_folder(None, model) == str(model)


def test_the_servers_tokenizer_path_comes_first(tmp_path: Path) -> None:
    model = _folder(tmp_path / "m", "tokenizer_config.json")
    tok = _folder(tmp_path / "tok", "tokenizer.json")
    assert tokenizer_folder(tok, model) == str(tok)


def test_a_gguf_file_or_a_folder_without_a_tokenizer_is_left_to_bench_load(tmp_path: Path) -> None:
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert tokenizer_folder(None, gguf) is None
    assert tokenizer_folder(_folder(tmp_path / "exl", "config.json"), _folder(tmp_path / "m2", "x")) is None
