"""What the three on-disk contracts (``config.json``, ``tki.json``, ``gallery.json``) share.

Each contract is one dataclass with ``from_dict`` / ``to_dict`` and a format version. Readers accept every
version up to their own and refuse a newer major version with one line (:class:`ContractError`, a
``ValueError``) that says what to do; a file that is not JSON, or not a JSON object, is refused the same way.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar

from tki_sdk.common.atomic import atomic_write_json

__all__ = ["ContractError", "JsonContract", "read_json_object", "check_version", "require"]


class ContractError(ValueError):
    """An on-disk contract file is missing, damaged or newer than this tki-sdk; the message says what to do."""


def read_json_object(path: str | os.PathLike, what: str, fix: str) -> dict[str, Any]:
    """The JSON object in ``path``; a :class:`ContractError` naming ``what`` and ``fix`` when the file is
    missing, unreadable, not JSON, or not an object."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ContractError(f"no {what} at {p}; {fix}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ContractError(f"{p} cannot be read ({getattr(e, 'strerror', None) or e}); {fix}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ContractError(f"{p} is corrupt (not valid JSON: {e.msg} at line {e.lineno}); {fix}") from None
    if not isinstance(data, dict):
        raise ContractError(f"{p} holds a JSON {type(data).__name__}, not a {what} object; {fix}")
    return data


def check_version(found: Any, supported: int, what: str) -> int:
    """``found`` as an int, refused when newer than ``supported`` (upgrade tki-sdk) or not a number."""
    try:
        v = int(found)
    except (TypeError, ValueError):
        raise ContractError(f"{what}: format version {found!r} is not a number; the file is damaged") from None
    if v > supported:
        raise ContractError(f"{what}: format version {v} is newer than this tki-sdk understands ({supported}); "
                            "upgrade tki-sdk")
    return v


def require(d: dict[str, Any], keys: tuple[str, ...], what: str, fix: str) -> None:
    """Refuse ``d`` with one line naming the first missing required key."""
    missing = [k for k in keys if k not in d]
    if missing:
        raise ContractError(f"{what} lacks required field(s) {missing}; {fix}")


class JsonContract:
    """Load / save for a contract dataclass: ``FILE`` (its name in a folder), ``WHAT`` and ``FIX`` (for the
    one-line errors); the dataclass gives ``from_dict(d, where)`` and ``to_dict()``. Unknown keys live in the
    dataclass's ``extra`` and are written back after the known ones."""

    FILE: ClassVar[str]
    WHAT: ClassVar[str]
    FIX: ClassVar[str]

    @classmethod
    def path_in(cls, path: str | os.PathLike) -> Path:
        """``path`` itself, or ``path/FILE`` when ``path`` is a folder."""
        p = Path(path)
        return p / cls.FILE if p.is_dir() else p

    @classmethod
    def load(cls, path: str | os.PathLike) -> Any:
        """Read the contract from a file or from the folder holding it."""
        p = cls.path_in(path)
        return cls.from_dict(read_json_object(p, cls.WHAT, cls.FIX), where=str(p))  # type: ignore[attr-defined]

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically to a file or into the folder ``path``."""
        return atomic_write_json(self.path_in(path), self.to_dict())  # type: ignore[attr-defined]

    @staticmethod
    def with_extra(known: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
        """The known fields followed by the unknown ones kept from the file."""
        return {**known, **{k: v for k, v in extra.items() if k not in known}}
