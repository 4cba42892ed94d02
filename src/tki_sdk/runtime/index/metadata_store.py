"""Gallery metadata in SQLite: one JSON document per key plus an attribute table indexed for ``where``.

Tables: ``items(key INTEGER PRIMARY KEY, meta TEXT)`` (the item's metadata as JSON) and
``attrs(key, name, value)`` with an index on ``(name, value)``: one row per scalar field value (a list field
gives one row per scalar element). Keys are uint64 stored as the int64 of the same bit pattern.

``match(where)`` returns the keys whose metadata satisfies every condition: ``{"domain": "sketch"}`` means
``domain == "sketch"``, ``{"class": ["dog", "horse"]}`` means ``class`` is any of them (for list fields: any
element is), several fields must all hold (SQL ``INTERSECT``). A filter holds at most
:data:`MAX_WHERE_FIELDS` fields and :data:`MAX_WHERE_VALUES` values in all (``ValueError`` beyond): SQLite
caps a compound SELECT at 500 terms and, in older builds, a statement at 999 parameters.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

__all__ = ["MetadataStore", "MAX_WHERE_FIELDS", "MAX_WHERE_VALUES"]

#: Most fields one ``where`` filter may name.
MAX_WHERE_FIELDS = 32
#: Most values one ``where`` filter may list, over all its fields.
MAX_WHERE_VALUES = 900


def _signed(keys: np.ndarray) -> list[int]:
    """uint64 keys -> Python ints of their int64 bit pattern (what SQLite's INTEGER holds)."""
    return [int(k) for k in np.asarray(keys, dtype=np.uint64).view(np.int64)]


def _attr_values(value: Any) -> list[Any]:
    """Filterable values of one metadata field: scalars, or the scalar elements of a list."""
    if isinstance(value, (list, tuple)):
        return [v for v in value if isinstance(v, (str, int, float, bool))]
    if isinstance(value, (str, int, float, bool)):
        return [value]
    return []


class MetadataStore:
    """Metadata in SQLite: ``items(key, meta JSON)`` + ``attrs(key, name, value)`` indexed for ``where``."""

    def __init__(self, conn: sqlite3.Connection, create: bool) -> None:
        self.conn = conn
        if create:
            conn.executescript(
                """
                CREATE TABLE IF NOT EXISTS items (key INTEGER PRIMARY KEY, meta TEXT NOT NULL);
                CREATE TABLE IF NOT EXISTS attrs (key INTEGER NOT NULL, name TEXT NOT NULL, value);
                CREATE INDEX IF NOT EXISTS attrs_nv ON attrs (name, value);
                CREATE INDEX IF NOT EXISTS attrs_k ON attrs (key);
                """
            )

    @classmethod
    def memory(cls) -> "MetadataStore":
        return cls(sqlite3.connect(":memory:", check_same_thread=False), create=True)

    @classmethod
    def copy_of(cls, path: Path) -> "MetadataStore":
        src = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        dst = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            src.backup(dst)
        finally:
            src.close()
        return cls(dst, create=True)

    @classmethod
    def readonly(cls, path: Path) -> "MetadataStore":
        conn = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, check_same_thread=False)
        return cls(conn, create=False)

    def add(self, keys: np.ndarray, metas: Sequence[Mapping[str, Any] | None]) -> None:
        sk = _signed(keys)
        rows, attrs = [], []
        for k, m in zip(sk, metas):
            m = dict(m or {})
            rows.append((k, json.dumps(m, sort_keys=True, default=str)))
            for name, value in m.items():
                for v in _attr_values(value):
                    attrs.append((k, str(name), v))
        with self.conn:
            self.conn.executemany("INSERT INTO items (key, meta) VALUES (?, ?)", rows)
            self.conn.executemany("INSERT INTO attrs (key, name, value) VALUES (?, ?, ?)", attrs)

    def remove(self, keys: np.ndarray) -> None:
        sk = [(k,) for k in _signed(keys)]
        with self.conn:
            self.conn.executemany("DELETE FROM items WHERE key = ?", sk)
            self.conn.executemany("DELETE FROM attrs WHERE key = ?", sk)

    def get(self, keys: np.ndarray) -> list[dict[str, Any] | None]:
        sk = _signed(keys)
        found: dict[int, dict[str, Any]] = {}
        for s in range(0, len(sk), 900):
            chunk = sk[s : s + 900]
            q = f"SELECT key, meta FROM items WHERE key IN ({','.join('?' * len(chunk))})"
            for k, m in self.conn.execute(q, chunk):
                found[k] = json.loads(m)
        return [found.get(k) for k in sk]

    def match(self, where: Mapping[str, Any]) -> np.ndarray:
        """Sorted uint64 keys whose metadata satisfies every ``name: value | [values]`` condition."""
        if len(where) > MAX_WHERE_FIELDS:
            raise ValueError(f"where names {len(where)} fields; a filter may name at most {MAX_WHERE_FIELDS} fields")
        n_values = sum(len(w) if isinstance(w, (list, tuple, set, frozenset)) else 1 for w in where.values())
        if n_values > MAX_WHERE_VALUES:
            raise ValueError(f"where lists {n_values} values; a filter may list at most {MAX_WHERE_VALUES} values "
                             "in all")
        parts, args = [], []
        for name, want in where.items():
            vals = list(want) if isinstance(want, (list, tuple, set, frozenset)) else [want]
            if not vals:
                return np.zeros(0, dtype=np.uint64)
            for v in vals:
                if not isinstance(v, (str, int, float, bool)):
                    raise ValueError(f"where[{name!r}]: values must be str, int, float or bool, got {type(v).__name__}")
            parts.append(f"SELECT key FROM attrs WHERE name = ? AND value IN ({','.join('?' * len(vals))})")
            args.extend([str(name), *vals])
        if not parts:
            raise ValueError("where needs at least one field")
        q = " INTERSECT ".join(parts)
        keys = np.fromiter((r[0] for r in self.conn.execute(q, args)), dtype=np.int64)
        return np.sort(keys.view(np.uint64))

    def count(self) -> int:
        return int(self.conn.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    def backup_to(self, path: Path) -> None:
        dst = sqlite3.connect(str(path))
        try:
            self.conn.backup(dst)
        finally:
            dst.close()

    def close(self) -> None:
        self.conn.close()

