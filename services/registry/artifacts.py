"""The content-addressed artifact directory: ``artifacts/sha256/<2 hex>/<64 hex>.onnx``.

Paths come only from a validated hex digest, never from a model name or any other string a
caller sent (RELIABILITY.md rules 4 and 8). Files are immutable once moved in, so identical
artifacts share one file and readers never see a partial one.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from modelserve.errors import InvalidArgumentError
from modelserve.storage import fsync_dir

log = logging.getLogger(__name__)

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def check_sha256(digest: str) -> str:
    """``digest`` if it is 64 lowercase hex characters, else INVALID_ARGUMENT."""
    if not SHA256_RE.fullmatch(digest):
        shown = digest if len(digest) <= 80 else digest[:80] + "..."
        raise InvalidArgumentError(f"sha256 must be 64 lowercase hex characters; got {shown!r}")
    return digest


class ArtifactStore:
    """Immutable artifact files under ``root``, plus a ``tmp`` directory for uploads in flight
    on the same filesystem (so the final move is an atomic rename)."""

    def __init__(self, root: Path, tmp_dir: Path) -> None:
        self.root = root
        self.tmp_dir = tmp_dir
        (root / "sha256").mkdir(parents=True, exist_ok=True)
        tmp_dir.mkdir(parents=True, exist_ok=True)

    def path_for(self, sha256: str) -> Path:
        digest = check_sha256(sha256)
        return self.root / "sha256" / digest[:2] / f"{digest}.onnx"

    def new_temp_path(self) -> Path:
        """A path for an upload to stream into, alone in a fresh private directory.

        The directory, not the file name, is what is unique: after the file is renamed away,
        no later upload can be handed the same path while this one's cleanup is pending.
        """
        return Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix="upload-")) / "artifact.part"

    def ingest(self, src: Path, sha256: str, size_bytes: int) -> Path:
        """Make ``src`` (already hashed to ``sha256``) durable at its content address.

        fsync the data, rename into place, fsync the directory: once this returns, the file
        survives a crash, so a metadata row committed afterwards never lacks its file. An
        identical artifact already stored is reused and ``src`` is left for the caller to drop.
        """
        dest = self.path_for(sha256)
        if dest.exists() and dest.stat().st_size == size_bytes:
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        with src.open("rb") as f:
            os.fsync(f.fileno())
        os.replace(src, dest)
        fsync_dir(dest.parent)
        return dest

    def clear_temp(self) -> None:
        """Remove uploads left by a previous process (only safe before serving starts)."""
        for path in self.tmp_dir.iterdir():
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    def remove_unreferenced(self, referenced: Iterable[str]) -> int:
        """Delete artifact files no version refers to (left by a crash between the rename and
        the commit); only safe before serving starts. Returns how many were removed."""
        keep = set(referenced)
        removed = 0
        for path in (self.root / "sha256").glob("*/*.onnx"):
            if path.stem not in keep:
                log.info("removing unreferenced artifact %s", path.name)
                path.unlink(missing_ok=True)
                removed += 1
        return removed
