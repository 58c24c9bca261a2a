"""Checkpoints by their Hugging Face Hub name: fetched through ``huggingface_hub`` into its own cache.

A ``hub:`` entry of models.yaml (or ``--model ORG/NAME`` without an entry) is downloaded with
``snapshot_download`` / ``hf_hub_download``, so the files land in the normal hub cache (``HF_HUB_CACHE``,
``HF_HOME``), ``HF_TOKEN`` opens gated repos and ``HF_HUB_OFFLINE=1`` serves from the cache alone. Every engine
then gets the same local snapshot path, and the snapshot's commit is what a run records.

``huggingface_hub`` is imported inside the functions that download, so reading models.yaml stays light.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
_GLOB = re.compile(r"[*?\[]")
_SHARD = re.compile(r"-0*1-of-\d+\.gguf$")

# quantization_config.quant_method → models.yaml format (bitsandbytes is split by its bit width below).
_QUANT_METHODS = {
    "gptq": "gptq", "awq": "awq", "compressed-tensors": "compressed-tensors", "exl2": "exl2", "exl3": "exl3",
    "torchao": "torchao-int8", "hqq": "hqq",
}


class HubError(Exception):
    """A hub checkpoint cannot be fetched or recognised; the message says what to do."""


@dataclass(frozen=True)
class HubSnapshot:
    """A fetched hub checkpoint: where it is locally and which commit it is."""

    repo: str
    revision: str
    commit: str
    path: Path
    format: str

    def provenance(self) -> dict[str, str]:
        """What a run records about it (``run.yaml``)."""
        return {"repo": self.repo, "revision": self.revision, "commit": self.commit, "path": str(self.path),
                "format": self.format}


def cache_folder(repo: str) -> Path:
    """The hub cache folder a repo goes to (``models--ORG--NAME``), whether or not it exists."""
    from huggingface_hub import constants

    return (hub_cache() or Path(constants.HF_HUB_CACHE)) / ("models--" + repo.replace("/", "--"))


def is_repo_id(name: str) -> bool:
    """Whether ``name`` has the shape of a hub repo id (``ORG/NAME``)."""
    return bool(REPO_ID.match(name))


def offline() -> bool:
    """``HF_HUB_OFFLINE`` is set to a true value (read now, not at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def hub_cache() -> Path | None:
    """``HF_HUB_CACHE`` as set now (``None``: huggingface_hub's default, which follows ``HF_HOME``)."""
    value = os.environ.get("HF_HUB_CACHE")
    return Path(value).expanduser() if value else None


def fetch(repo: str, *, revision: str | None = None, file: str | None = None,
          allow_patterns: Sequence[str] | None = None, expected: str | None = None,
          local_only: bool = False) -> HubSnapshot:
    """Download (or find in the cache) ``repo`` at ``revision`` and detect its format.

    ``file`` picks one file (a GGUF of a GGUF repo) or a glob; ``allow_patterns`` limits a snapshot. A format
    read from the repo that differs from ``expected`` (the entry's ``format:``) is an error. ``local_only``
    (or ``HF_HUB_OFFLINE=1``) looks in the cache alone.
    """
    wanted = revision or "main"
    try:
        local = _download(repo, wanted, file, allow_patterns, local_only or offline())
    except Exception as exc:
        raise explain(exc, repo, wanted) from exc
    path = _pick_file(local, file) if file else _single_gguf(local)
    fmt = detect_format(path)
    if expected is not None and expected != fmt:
        raise HubError(f"{repo}@{wanted}: models.yaml says format {expected!r} but the repo's files are {fmt!r} "
                       f"({path}); correct the entry's format (or leave it out to use the detected one)")
    return HubSnapshot(repo=repo, revision=wanted, commit=commit_of(local), path=path, format=fmt)


def _download(repo: str, revision: str, file: str | None, allow_patterns: Sequence[str] | None,
              local_only: bool) -> Path:
    """The local snapshot folder holding what was asked for."""
    from huggingface_hub import hf_hub_download, snapshot_download

    common: dict[str, Any] = {"revision": revision, "cache_dir": hub_cache(), "local_files_only": local_only}
    if file and not _GLOB.search(file):
        return snapshot_root(Path(hf_hub_download(repo, file, **common)))
    patterns = [file] if file else (list(allow_patterns) if allow_patterns else None)
    return Path(str(snapshot_download(repo, allow_patterns=patterns, **common)))


def _pick_file(folder: Path, pattern: str) -> Path:
    """The one file matching ``pattern`` (the first shard of a split GGUF)."""
    found = sorted(p for p in folder.glob(pattern) if p.is_file())
    shards = [p for p in found if _SHARD.search(p.name)]
    if len(found) == 1 or (shards and len(shards) == 1):
        return shards[0] if shards else found[0]
    if not found:
        raise HubError(f"no file matches {pattern!r} in {folder}")
    names = ", ".join(p.name for p in found)
    raise HubError(f"{pattern!r} matches several files ({names}); give `file:` one of them")


def _single_gguf(folder: Path) -> Path:
    """A GGUF-only repo names its one GGUF; a folder with config.json (or several GGUFs) stays a folder."""
    if (folder / "config.json").is_file():
        return folder
    ggufs = sorted(folder.glob("*.gguf"))
    if len(ggufs) == 1:
        return ggufs[0]
    if ggufs:
        names = ", ".join(p.name for p in ggufs)
        raise HubError(f"{folder} holds several GGUF files ({names}); choose one with `file:` (or --file)")
    return folder


def snapshot_root(path: Path) -> Path:
    """The ``.../snapshots/<commit>`` folder that holds ``path`` (paths are not resolved: files link to blobs)."""
    parts = path.parts
    if "snapshots" in parts:
        index = len(parts) - 1 - parts[::-1].index("snapshots")
        if index + 1 < len(parts):
            return Path(*parts[: index + 2])
    raise HubError(f"{path} is not inside a hub cache snapshot folder")


def commit_of(snapshot: Path) -> str:
    """The commit of a hub cache snapshot folder (``.../snapshots/<commit>``)."""
    return snapshot_root(snapshot).name


def detect_format(path: Path) -> str:
    """The models.yaml format of a checkpoint, read from its files.

    ``*.gguf`` → gguf; otherwise config.json's ``quantization_config`` (gptq, awq, compressed-tensors,
    bitsandbytes, torchao, hqq, exl2/exl3), EXL2/EXL3 metadata files, else hf.
    """
    if path.is_file():
        if path.suffix == ".gguf":
            return "gguf"
        raise HubError(f"{path} is not a GGUF file; a single-file checkpoint must be GGUF")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise HubError(f"{path} has neither config.json nor a GGUF file: not a checkpoint servebench can serve")
    config = json.loads(config_file.read_text())
    quant = config.get("quantization_config") or {}
    if quant:
        return _quant_format(quant, path)
    if (path / "measurement.json").is_file():
        return "exl2"
    return "hf"


def _quant_format(quant: dict[str, Any], path: Path) -> str:
    method = str(quant.get("quant_method", "")).lower()
    if method == "bitsandbytes":
        return "bnb-4bit" if quant.get("load_in_4bit") else "bnb-8bit"
    if method in _QUANT_METHODS:
        return _QUANT_METHODS[method]
    raise HubError(f"{path}/config.json: quantization_config.quant_method {method!r} is not a format servebench "
                   f"serves ({', '.join(sorted({*_QUANT_METHODS, 'bitsandbytes'}))})")


def explain(exc: Exception, repo: str, revision: str) -> HubError:
    """One clear message for each way a hub download fails (gated, missing revision or repo, offline)."""
    from huggingface_hub import errors

    where = f"{repo}@{revision}"
    if isinstance(exc, HubError):
        return exc
    if isinstance(exc, errors.GatedRepoError):
        return HubError(_gated(repo))
    if isinstance(exc, errors.RevisionNotFoundError):
        return HubError(f"{repo} has no revision {revision!r}: give an existing branch, tag or commit as "
                        f"`revision:` (see https://huggingface.co/{repo}/commits/main)")
    if isinstance(exc, errors.RepositoryNotFoundError):
        return HubError(f"no repo {repo!r} on the hub (or it is private and HF_TOKEN does not open it): check the "
                        f"name, or set HF_TOKEN")
    if isinstance(exc, errors.LocalEntryNotFoundError):  # a subclass of EntryNotFoundError: first
        return HubError(_not_cached(where))
    if isinstance(exc, (errors.EntryNotFoundError, errors.RemoteEntryNotFoundError)):
        return HubError(f"{where} has no such file: {exc}")
    if isinstance(exc, errors.HfHubHTTPError):
        return HubError(f"downloading {where} failed: {exc}")
    if isinstance(exc, OSError):
        return HubError(f"downloading {where} failed ({exc}); {_not_cached(where)}")
    return HubError(f"downloading {where} failed: {exc!r}")


def _gated(repo: str) -> str:
    from huggingface_hub import get_token

    if get_token():
        return (f"{repo} is a gated repo and your token has no access yet: accept its terms at "
                f"https://huggingface.co/{repo} with the account of HF_TOKEN, then retry")
    return (f"{repo} is a gated repo: accept its terms at https://huggingface.co/{repo}, then set HF_TOKEN "
            f"(a read token) or run `hf auth login`, and retry")


def _not_cached(where: str) -> str:
    cache = hub_cache() or "the default hub cache (HF_HUB_CACHE / HF_HOME)"
    if offline():
        return (f"{where} is not in the local hub cache ({cache}) and HF_HUB_OFFLINE=1 forbids downloading: "
                f"unset HF_HUB_OFFLINE where the hub is reachable, or fill the cache there and copy it here")
    return (f"cannot reach the hub to download {where}, and it is not in the local hub cache ({cache}): check the "
            f"network (or a proxy), or download it on a machine that reaches the hub and copy the cache here")
