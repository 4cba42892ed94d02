"""Request inputs, validated into plain values; anything wrong is an :class:`APIError` with one line.

- JSON bodies and the ``where`` form field: nested at most :data:`MAX_JSON_DEPTH` deep (checked on the raw
  bytes before parsing, so no depth reaches the parser's recursion limit).
- ``k``: an integer 1..``max_k``.
- ``where``: a JSON object ``{field: value | [values]}``, values str / int / float / bool, integers within
  int64; at most 16 fields and 256 values per field (the gallery's ``where`` contract: every field must match,
  a list means any of). Only the fields in ``allowed`` may be named: the service allows exactly the metadata
  fields its answers show, so a filter cannot probe a hidden field (a file path) for existence.
- ``vectors``: a JSON array of ``D`` numbers or of rows of ``D`` numbers, all finite and within float32
  range; each row's float32 norm must be finite (and non-zero for the cosine metric), so no query turns into
  zero or infinity once converted.
- images: the file parts of a ``multipart/form-data`` body, each non-empty.
- ``text``: one string or a list of strings (repeatable form field ``text``), at most ``max_texts``, each
  1..``max_chars`` characters and not blank once whitespace is stripped (the text itself is kept as sent).
- ``text_template``: ``raw``, ``template``, ``ensemble`` or a string holding ``{}``; absent: the export's default.
"""
from __future__ import annotations

import json
import math
from http import HTTPStatus
from typing import Any, Collection

import numpy as np

from tki_sdk.serve.errors import APIError

__all__ = ["DEFAULT_K", "parse_k", "parse_where", "parse_vectors", "parse_json", "json_depth", "parse_texts",
           "parse_template", "MAX_WHERE_FIELDS", "MAX_WHERE_VALUES", "MAX_JSON_DEPTH", "MAX_TEMPLATE_CHARS"]

#: k of a search that names none.
DEFAULT_K = 10
MAX_WHERE_FIELDS = 16
MAX_WHERE_VALUES = 256
#: Deepest nesting of arrays and objects accepted in a JSON body (a search body needs 3).
MAX_JSON_DEPTH = 8
#: Longest ``text_template`` accepted (characters).
MAX_TEMPLATE_CHARS = 200
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = float(np.finfo(np.float32).max)
_SCALARS = (str, int, float, bool)
_UNPROCESSABLE = HTTPStatus.UNPROCESSABLE_ENTITY


def json_depth(raw: bytes) -> int:
    """Deepest nesting of ``[``/``{`` in the JSON text ``raw``, brackets inside strings ignored; linear time
    and vectorised (no per-character Python loop, no regular expression), so any body is measured quickly.

    A quote opens or closes a string unless an odd number of backslashes precedes it; a bracket lies inside
    a string when an odd number of such quotes precede it. (A backslash outside a string is invalid JSON: the
    parser stops there, so a different count after it never reaches the parser.)"""
    a = np.frombuffer(raw, dtype=np.uint8)
    if not a.size:
        return 0
    step = (a == ord("[")).view(np.int8) + (a == ord("{")).view(np.int8)
    step -= (a == ord("]")).view(np.int8) + (a == ord("}")).view(np.int8)
    quotes = np.flatnonzero(a == ord('"'))
    if quotes.size:
        slashes = np.flatnonzero(a == ord("\\"))
        if slashes.size:
            # runs of consecutive backslashes: the run ending right before a quote escapes it when odd
            ends = np.flatnonzero(np.diff(slashes, append=-2) != 1)  # index of each run's last backslash
            starts = np.concatenate(([0], ends[:-1] + 1))
            i = np.searchsorted(slashes[ends], quotes - 1)
            hit = i < ends.size
            hit[hit] = slashes[ends[i[hit]]] == quotes[hit] - 1
            run = np.zeros(quotes.size, dtype=np.int64)
            run[hit] = ends[i[hit]] - starts[i[hit]] + 1
            quotes = quotes[run % 2 == 0]
        brackets = np.flatnonzero(step)
        inside = np.searchsorted(quotes, brackets) % 2 == 1
        step[brackets[inside]] = 0
    return int(np.cumsum(step, dtype=np.int32).max(initial=0))


def parse_json(raw: bytes | str, what: str) -> Any:
    """``raw`` parsed as JSON after the depth check; :class:`APIError` 422 (too deep, numbers too long) or
    400 (not JSON), naming ``what``."""
    data = raw.encode("utf-8", "surrogatepass") if isinstance(raw, str) else bytes(raw)
    depth = json_depth(data)
    if depth > MAX_JSON_DEPTH:
        raise APIError(_UNPROCESSABLE, f"{what} is nested {depth:,} deep; at most {MAX_JSON_DEPTH}")
    try:
        return json.loads(data)
    except RecursionError:  # cannot happen below MAX_JSON_DEPTH; kept as a 422 all the same
        raise APIError(_UNPROCESSABLE, f"{what} is nested too deeply; at most {MAX_JSON_DEPTH}") from None
    except UnicodeDecodeError as e:
        raise APIError(HTTPStatus.BAD_REQUEST, f"{what} is not valid UTF-8 ({e.reason})") from None
    except json.JSONDecodeError as e:
        raise APIError(HTTPStatus.BAD_REQUEST, f"{what} is not valid JSON ({e.msg})") from None
    except ValueError as e:  # an integer of more than 4,300 digits
        raise APIError(_UNPROCESSABLE, f"{what} holds a number that is too long ({e})") from None


def parse_k(value: Any, max_k: int, default: int = DEFAULT_K) -> int:
    if value is None or value == "":
        return default
    if isinstance(value, bool):
        raise APIError(_UNPROCESSABLE, f"k must be an integer 1..{max_k}")
    try:
        k = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (TypeError, ValueError):
        k = None
    if k is None or not 1 <= k <= max_k:
        raise APIError(_UNPROCESSABLE, f"k must be an integer 1..{max_k} (got {str(value)[:40]!r})")
    return k


def parse_where(value: Any, allowed: Collection[str]) -> dict[str, Any] | None:
    """``None`` / ``""`` / ``{}`` -> no filter; a JSON string or a dict -> the validated filter, naming only
    fields in ``allowed``."""
    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = parse_json(value, "where")
        except APIError as e:
            if e.status == HTTPStatus.BAD_REQUEST:
                raise APIError(_UNPROCESSABLE, f'{e.message}; give an object like {{"domain": "sketch"}}') from None
            raise
        if value is None or value == {}:
            return None
    if not isinstance(value, dict):
        raise APIError(_UNPROCESSABLE, 'where must be a JSON object like {"domain": "sketch", "class": ["dog", "horse"]}')
    if len(value) > MAX_WHERE_FIELDS:
        raise APIError(_UNPROCESSABLE, f"where has {len(value)} fields; at most {MAX_WHERE_FIELDS}")
    out: dict[str, Any] = {}
    for name, want in value.items():
        if not name:
            raise APIError(_UNPROCESSABLE, "where has an empty field name")
        if name not in allowed:
            raise APIError(_UNPROCESSABLE, f"where cannot filter on {str(name)[:40]!r}; filterable fields: "
                           f"{', '.join(sorted(allowed)) or 'none'}")
        vals = want if isinstance(want, list) else [want]
        if not vals:
            raise APIError(_UNPROCESSABLE, f"where[{name!r}] is an empty list; give at least one value")
        if len(vals) > MAX_WHERE_VALUES:
            raise APIError(_UNPROCESSABLE, f"where[{name!r}] has {len(vals)} values; at most {MAX_WHERE_VALUES}")
        for v in vals:
            if not isinstance(v, _SCALARS) or (isinstance(v, float) and not math.isfinite(v)):
                raise APIError(_UNPROCESSABLE, f"where[{name!r}]: values must be strings, numbers or booleans")
            if isinstance(v, int) and not isinstance(v, bool) and not INT64_MIN <= v <= INT64_MAX:
                raise APIError(_UNPROCESSABLE, f"where[{name!r}]: integers must lie within the 64-bit range "
                               f"{INT64_MIN}..{INT64_MAX}")
        out[str(name)] = list(vals) if isinstance(want, list) else want
    return out


def parse_vectors(value: Any, dim: int, max_rows: int, nonzero: bool = False) -> np.ndarray:
    """A JSON vector or list of vectors -> float32 ``[n, dim]``; width, count, range and the float32 norm of
    each row checked (``nonzero``: also refuse rows whose norm is zero, which have no direction under the
    cosine metric)."""
    if not isinstance(value, list) or not value:
        raise APIError(_UNPROCESSABLE, f"vectors must be a non-empty array of {dim} numbers or of such arrays")
    rows = value if isinstance(value[0], list) else [value]
    if len(rows) > max_rows:
        raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"{len(rows)} vectors in one request; at most {max_rows} (--max-images)")
    for i, row in enumerate(rows):
        if not isinstance(row, list) or len(row) != dim:
            got = len(row) if isinstance(row, list) else type(row).__name__
            raise APIError(_UNPROCESSABLE, f"vector {i} has {got} values; this model's vectors have {dim}")
        if not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in row):
            raise APIError(_UNPROCESSABLE, f"vector {i} holds a value that is not a number")
        if any(isinstance(x, int) and abs(x) > FLOAT32_MAX for x in row):
            raise APIError(_UNPROCESSABLE, f"vector {i} holds an integer beyond float32 range")
    arr = np.asarray(rows, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise APIError(_UNPROCESSABLE, "vectors contain NaN or infinity; send finite numbers")
    if np.any(np.abs(arr) > FLOAT32_MAX):
        raise APIError(_UNPROCESSABLE, "vectors hold values beyond float32 range")
    if nonzero and np.any(~np.any(arr != 0, axis=1)):
        raise APIError(_UNPROCESSABLE, "a vector is all zeros; cosine search needs a direction")
    out = arr.astype(np.float32)
    with np.errstate(over="ignore", under="ignore"):
        norms = np.sqrt(np.einsum("ij,ij->i", out, out))  # in float32, as the index computes it
    for i, n in enumerate(norms):
        if not np.isfinite(n) or (nonzero and n == 0):
            raise APIError(_UNPROCESSABLE, f"vector {i} becomes {'zero' if n == 0 else 'infinite'} in float32 "
                           "(its squared norm leaves float32 range); scale it towards unit length")
    return out


def parse_texts(value: Any, max_texts: int, max_chars: int) -> list[str]:
    """One string or a list of strings -> the text queries; 413 above ``max_texts`` (as for images), 422 for a
    text that is not a string, blank, or longer than ``max_chars`` characters."""
    texts = value if isinstance(value, list) else [value]
    if not texts:
        raise APIError(_UNPROCESSABLE, "text is an empty list; give one or more non-empty strings")
    if len(texts) > max_texts:
        raise APIError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                       f"{len(texts)} texts in one request; at most {max_texts} (--max-texts)")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise APIError(_UNPROCESSABLE, f"text {i} is {type(t).__name__}, not a string")
        if not t.strip():
            raise APIError(_UNPROCESSABLE, f"text {i} is empty; type some words to search for")
        if len(t) > max_chars:
            raise APIError(_UNPROCESSABLE, f"text {i} is {len(t):,} characters long; at most {max_chars:,} "
                           "(--max-text-chars)")
    return list(texts)


def parse_template(value: Any, *, ensemble_ok: bool) -> str | None:
    """``text_template``: None / ``""`` -> None (the export's default); else ``raw``, ``template``, ``ensemble``
    or a string holding ``{}``, up to :data:`MAX_TEMPLATE_CHARS` characters. ``ensemble`` only when the export
    has learned domain vectors (``ensemble_ok``)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise APIError(_UNPROCESSABLE, "text_template must be a string: raw, template, ensemble or one holding {}")
    if len(value) > MAX_TEMPLATE_CHARS:
        raise APIError(_UNPROCESSABLE, f"text_template is {len(value):,} characters; at most {MAX_TEMPLATE_CHARS}")
    if value not in ("raw", "template", "ensemble") and "{}" not in value:
        raise APIError(_UNPROCESSABLE, f"text_template {value[:40]!r} is neither raw, template, ensemble nor a "
                       "template holding {} (e.g. 'a photo of a {}.')")
    if value == "ensemble" and not ensemble_ok:
        raise APIError(_UNPROCESSABLE, "this model has no learned domain vectors (vanilla CLIP, --head none); "
                       "use text_template raw, template or one holding {}")
    return value
