"""Model files checked against ``tki.json`` before they are opened.

``tki.json`` records each artifact's ``file`` (a name inside the export folder), ``bytes`` and ``sha256``.
:func:`checked_artifact_path` refuses, in one line (:class:`ArtifactCheckError`, a ``ValueError``):

- a ``file`` that would leave the folder: an absolute path, a ``..`` component, an empty name -- checked on
  the recorded name, before anything is opened (a symbolic link *named* inside the folder is followed: that is
  how a large model is shared between folders);
- a file whose size differs from ``bytes`` (always; costs one ``stat``);
- a file whose SHA-256 differs from ``sha256`` (``verify="sha256"``, the default; reads the file once,
  about 1 s for a 400 MB ViT-B at 400 MB/s). ``verify="size"`` skips the hash: a file of the same size with
  other contents (a different model of the same architecture) is then *not* detected.

Exports that predate ``bytes`` / ``sha256`` are opened unchecked for what they do not record.
"""
from __future__ import annotations

import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Mapping

from tki_sdk.common.atomic import sha256_file

__all__ = ["ArtifactCheckError", "VERIFY_MODES", "checked_artifact_path", "artifact_file", "verify_artifact"]

#: ``"sha256"``: size and full hash (default); ``"size"``: size only (the hash is skipped).
VERIFY_MODES = ("sha256", "size")

_FIX = "re-export the model with tki-export, or copy the export folder again"


class ArtifactCheckError(ValueError):
    """A model file is outside its folder, missing, or differs from what ``tki.json`` records."""


def artifact_file(model_dir: str | os.PathLike, key: str, entry: Mapping[str, Any]) -> Path:
    """The path of artifact ``key`` (``entry`` = its ``tki.json`` record) inside ``model_dir``; refuses a
    ``file`` that is absolute, holds ``..`` or is empty."""
    name = entry.get("file")
    if not isinstance(name, str) or not name.strip() or name.strip() in (".", "./"):
        raise ArtifactCheckError(f"artifact {key!r} in tki.json has no 'file' inside the model folder; {_FIX}")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if (name.startswith(("/", "\\")) or PureWindowsPath(name).drive or os.path.isabs(name) or ".." in parts
            or "\0" in name):
        raise ArtifactCheckError(
            f"artifact {key!r}: file {name!r} in tki.json is not inside the model folder (absolute path or '..'); "
            f"refusing to open it; {_FIX}")
    return Path(model_dir) / name


def verify_artifact(path: Path, key: str, entry: Mapping[str, Any], verify: str = "sha256") -> str:
    """Check ``path`` against its record; returns what was checked (``"sha256"``, ``"size (sha256 skipped)"``,
    ``"size"`` or ``"nothing recorded"``)."""
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify={verify!r} unknown; use one of {', '.join(VERIFY_MODES)}")
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise FileNotFoundError(f"model file {path} (precision {key}) is missing; re-export or copy it") from None
    want_bytes, want_sha = entry.get("bytes"), entry.get("sha256")
    if isinstance(want_bytes, int) and size != want_bytes:
        raise ArtifactCheckError(
            f"model file {path.name} ({key}) is {size:,} bytes but tki.json records {want_bytes:,} bytes: "
            f"it is not the file that was exported; {_FIX}")
    if verify == "size" or not isinstance(want_sha, str):
        if isinstance(want_bytes, int):
            return "size (sha256 skipped)" if isinstance(want_sha, str) else "size"
        return "nothing recorded"
    if sha256_file(path) != want_sha:
        raise ArtifactCheckError(
            f"model file {path.name} ({key}) differs from the sha256 tki.json records: it is not the file that "
            f"was exported (a swapped or damaged model); {_FIX}")
    return "sha256"


def checked_artifact_path(model_dir: str | os.PathLike, key: str, entry: Mapping[str, Any],
                          verify: str = "sha256") -> tuple[Path, str]:
    """:func:`artifact_file` then :func:`verify_artifact`: ``(path, what was checked)``."""
    path = artifact_file(model_dir, key, entry)
    return path, verify_artifact(path, key, entry, verify)
