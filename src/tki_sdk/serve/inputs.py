"""Request inputs, validated into plain values; anything wrong is an :class:`APIError` with one line.

- ``k``: an integer 1..``max_k``.
- ``where``: a JSON object ``{field: value | [values]}``, values str / int / float / bool; at most 16 fields
  and 256 values per field (the gallery's ``where`` contract: every field must match, a list means any of).
- ``vectors``: a JSON array of ``D`` numbers or of rows of ``D`` numbers, all finite.
- images: the file parts of a ``multipart/form-data`` body, each non-empty.
"""
from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from tki_sdk.serve.errors import APIError

__all__ = ["parse_k", "parse_where", "parse_vectors", "MAX_WHERE_FIELDS", "MAX_WHERE_VALUES"]

MAX_WHERE_FIELDS = 16
MAX_WHERE_VALUES = 256
_SCALARS = (str, int, float, bool)


def parse_k(value: Any, max_k: int, default: int = 10) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise APIError(422, f"k must be an integer 1..{max_k}")
    try:
        k = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        k = None
    if k is None or not 1 <= k <= max_k:
        raise APIError(422, f"k must be an integer 1..{max_k} (got {str(value)[:40]!r})")
    return k


def parse_where(value: Any) -> dict[str, Any] | None:
    """``None`` / ``""`` / ``{}`` -> no filter; a JSON string or a dict -> the validated filter."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise APIError(422, f"where is not valid JSON ({e.msg}); give an object like "
                           '{"domain": "sketch"}') from None
        if value is None or value == {}:
            return None
    if not isinstance(value, dict):
        raise APIError(422, 'where must be a JSON object like {"domain": "sketch", "class": ["dog", "horse"]}')
    if len(value) > MAX_WHERE_FIELDS:
        raise APIError(422, f"where has {len(value)} fields; at most {MAX_WHERE_FIELDS}")
    out: dict[str, Any] = {}
    for name, want in value.items():
        if not name:
            raise APIError(422, "where has an empty field name")
        vals = want if isinstance(want, list) else [want]
        if not vals:
            raise APIError(422, f"where[{name!r}] is an empty list; give at least one value")
        if len(vals) > MAX_WHERE_VALUES:
            raise APIError(422, f"where[{name!r}] has {len(vals)} values; at most {MAX_WHERE_VALUES}")
        for v in vals:
            if not isinstance(v, _SCALARS) or (isinstance(v, float) and not math.isfinite(v)):
                raise APIError(422, f"where[{name!r}]: values must be strings, numbers or booleans")
        out[str(name)] = list(vals) if isinstance(want, list) else want
    return out


def parse_vectors(value: Any, dim: int, max_rows: int, nonzero: bool = False) -> np.ndarray:
    """A JSON vector or list of vectors -> float32 ``[n, dim]``; width, count and finiteness checked
    (``nonzero``: also refuse all-zero rows, which have no direction under the cosine metric)."""
    if not isinstance(value, list) or not value:
        raise APIError(422, f"vectors must be a non-empty array of {dim} numbers or of such arrays")
    rows = value if isinstance(value[0], list) else [value]
    if len(rows) > max_rows:
        raise APIError(413, f"{len(rows)} vectors in one request; at most {max_rows} (--max-images)")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != dim:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise APIError(422, f"vector {i} has {got} values; this model's vectors have {dim}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise APIError(422, f"vector {i} holds a value that is not a number")
    arr = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise APIError(422, "vectors contain NaN or infinity; send finite numbers")
    if np.any(np.abs(arr) > np.finfo(np.float32).max):
        raise APIError(422, "vectors hold values beyond float32 range")
    if nonzero and np.any(~np.any(arr != 0, axis=1)):
        raise APIError(422, "a vector is all zeros; cosine search needs a direction")
    return arr.astype(np.float32)
