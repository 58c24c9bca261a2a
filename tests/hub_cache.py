"""An offline Hugging Face hub cache built from the bundled checkpoints, in huggingface_hub's own layout.

``models--ORG--NAME/{blobs,refs,snapshots/<commit>}``: each snapshot file is a relative link to a blob named by
its sha256 (as for LFS files), ``refs/<branch>`` holds the commit. With ``HF_HUB_CACHE`` pointed at the folder
and ``HF_HUB_OFFLINE=1``, huggingface_hub's real ``snapshot_download`` / ``hf_hub_download`` serve from it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _blob_name(source: Path) -> str:
    digest = hashlib.sha256()
    with source.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def add_repo(cache: Path, repo: str, files: dict[str, Path], *, commit: str = COMMIT,
             ref: str = "main") -> Path:
    """Put ``files`` (name in the repo → a local file) in ``cache`` as ``repo`` at ``commit``; returns the snapshot.

    Blobs are symbolic links to the local files (the checkpoints are hundreds of MB), which huggingface_hub
    follows like any blob.
    """
    root = cache / ("models--" + repo.replace("/", "--"))
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True, exist_ok=True)
    for name, source in files.items():
        blob = root / "blobs" / _blob_name(source)
        if not blob.exists():
            blob.symlink_to(source.resolve())
        target = snapshot / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    (root / "refs").mkdir(exist_ok=True)
    (root / "refs" / ref).write_text(commit)
    return snapshot
