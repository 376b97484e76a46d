"""The identity of a checkpoint's weights, for caches keyed on them (stored vectors, ONNX exports)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def model_fingerprint(model_path: str) -> str:
    """Identifies the weights item vectors were made with: folder name plus file sizes and times."""
    folder = Path(model_path)
    digest = hashlib.blake2b(digest_size=8)
    for f in sorted(folder.glob("*")):
        if f.is_file():
            stat = f.stat()
            digest.update(f"{f.name}:{stat.st_size}:{int(stat.st_mtime)}".encode())
    return f"{folder.name}-{digest.hexdigest()}"
