"""Embedding shards: Parquet files of (key, path, labels, file signature, embedding, error), one per checkpoint.

Both ``tki embed`` engines (one process, or Ray Data) write their output as shards, and ``tki index
--from-parquet`` builds or updates a gallery from them. Every file is written whole or not at all (in
memory, then the common atomic writer), so a run killed at any point leaves only complete shards: they are
its checkpoints.

Columns (:data:`SHARD_COLUMNS`; one row per image file):

======== ============================== ===================================================================
key      uint64                         :func:`tki_sdk.runtime.pipeline.embed_run.item_key` of ``rel``
path     string                         absolute path when embedded
rel      string                         path relative to the images root (what the key hashes)
domain   string, null                   ``<domain>/<class>/<file>`` labels (null when the tree has none)
class    string, null
size     int64                          file size in bytes when embedded
mtime_ns int64                          modification time (ns) when embedded
sha256   string, null                   content hash (``--hash`` runs only)
embedding fixed_size_list<float32>[D], null   the model output; null when ``error`` is set
error    string, null                   why the file could not be embedded (null for good rows)
embedding_hash string, null             :func:`vector_hash` of the row's vector (null for error rows; absent
                                        in shards written before it existed)
======== ============================== ===================================================================

Integrity: every page carries a Parquet CRC-32 (``write_page_checksum``) that every read verifies
(``page_checksum_verification``); each row's vector is checked against its ``embedding_hash``; a run records
the SHA-256 of each shard it writes in its ``run.json``. A shard that fails any of them raises
:class:`~tki_sdk.runtime.pipeline.errors.ShardDamagedError` naming it.

File metadata (Arrow schema metadata ``tki.shard``, JSON): :class:`ShardInfo` -- format and version, the
model fingerprint (``ModelMetadata.fingerprint()``), embedding width, metric, the model summary a gallery
records, the images root, the engine and the time of writing. Names are ``part-<time ns>-<pid>-<id>.parquet``,
so name order is write order (later rows of a key supersede earlier ones).

pyarrow is imported lazily, inside the functions that need it.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from tki_sdk.common.atomic import atomic_write_bytes
from tki_sdk.common.contract import ContractError, check_version
from tki_sdk.runtime.pipeline.errors import ShardDamagedError

__all__ = [
    "SHARD_FORMAT", "SHARD_FORMAT_VERSION", "SHARD_METADATA_KEY", "SHARD_COLUMNS", "SIGNATURE_COLUMNS",
    "ShardInfo", "ShardRows", "write_shard", "read_shard_info", "list_shards", "iter_shard_batches",
    "import_pyarrow", "vector_hash", "HASH_COLUMN", "shard_sha256", "shard_width",
]

SHARD_FORMAT = "tki-embed-shard"
SHARD_FORMAT_VERSION = 1
SHARD_METADATA_KEY = b"tki.shard"
SHARD_COLUMNS = ("key", "path", "rel", "domain", "class", "size", "mtime_ns", "sha256", "embedding", "error")
#: Optional column (see the module docstring): read with ``embedding`` whenever the shard has it.
HASH_COLUMN = "embedding_hash"
#: The columns a resume or an index pass reads to decide what a shard holds (no vectors).
SIGNATURE_COLUMNS = ("key", "size", "mtime_ns", "sha256", "error")


def vector_hash(vector: np.ndarray) -> str:
    """Content hash of one embedding: BLAKE2b-64 (hex) of its float32 little-endian bytes. Two rows hold the
    same vector exactly when their hashes are equal (up to 2**-64)."""
    data = np.ascontiguousarray(vector, dtype="<f4").tobytes()
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def import_pyarrow() -> Any:
    """``pyarrow`` (and ``pyarrow.parquet``), or one line naming the install."""
    try:
        import pyarrow
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise ImportError("embedding shards need pyarrow; pip install 'tki-sdk[runtime]'") from None
    return pyarrow


@dataclass(frozen=True)
class ShardInfo:
    """The file-level metadata of a shard: which model wrote it and how to build a gallery from it."""

    model_fingerprint: str
    embedding_dim: int
    metric: str = "cos"
    model: dict[str, Any] = field(default_factory=dict)
    images_root: str = ""
    engine: str = "local"
    written_ns: int = 0
    #: Rows the shard holds (set by :func:`write_shard`; -1 in shards written before it existed): a read
    #: that yields another count is refused.
    rows: int = -1
    format: str = SHARD_FORMAT
    format_version: int = SHARD_FORMAT_VERSION

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, raw: bytes, where: str) -> "ShardInfo":
        try:
            d = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            raise ContractError(f"{where}: shard metadata is not JSON; the shard is damaged") from None
        if not isinstance(d, dict) or d.get("format") != SHARD_FORMAT:
            raise ContractError(f"{where} is not a tki embedding shard")
        check_version(d.get("format_version"), SHARD_FORMAT_VERSION, where)
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        try:
            return cls(**known)
        except TypeError as e:
            raise ContractError(f"{where}: shard metadata lacks a field ({e})") from None


@dataclass
class ShardRows:
    """Rows for one shard, column by column (``embeddings[i]`` is ignored where ``errors[i]`` is set)."""

    keys: list[int] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    rels: list[str] = field(default_factory=list)
    domains: list[str | None] = field(default_factory=list)
    classes: list[str | None] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    mtimes_ns: list[int] = field(default_factory=list)
    sha256s: list[str | None] = field(default_factory=list)
    embeddings: list[np.ndarray | None] = field(default_factory=list)
    errors: list[str | None] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, source: Any, embedding: np.ndarray | None, error: str | None) -> None:
        """One row for ``source`` (an :class:`~tki_sdk.runtime.pipeline.embed_run.SourceFile`)."""
        self.keys.append(int(source.key))
        self.paths.append(source.path)
        self.rels.append(source.rel)
        self.domains.append(source.domain)
        self.classes.append(source.class_name)
        self.sizes.append(int(source.size))
        self.mtimes_ns.append(int(source.mtime_ns))
        self.sha256s.append(source.sha256)
        self.embeddings.append(None if error is not None else embedding)
        self.errors.append(error)


def _table(rows: ShardRows, info: ShardInfo) -> Any:
    pa = import_pyarrow()
    d = int(info.embedding_dim)
    n = len(rows)
    flat = np.zeros((n, d), dtype=np.float32)
    valid = np.zeros(n, dtype=bool)
    hashes: list[str | None] = [None] * n
    for i, e in enumerate(rows.embeddings):
        if e is not None and rows.errors[i] is None:
            flat[i] = e
            valid[i] = True
            hashes[i] = vector_hash(flat[i])
    values = pa.array(flat.reshape(-1), type=pa.float32())
    emb = pa.FixedSizeListArray.from_arrays(values, d, mask=pa.array(~valid))
    schema = pa.schema(
        [("key", pa.uint64()), ("path", pa.string()), ("rel", pa.string()), ("domain", pa.string()),
         ("class", pa.string()), ("size", pa.int64()), ("mtime_ns", pa.int64()), ("sha256", pa.string()),
         ("embedding", pa.list_(pa.float32(), d)), ("error", pa.string()), (HASH_COLUMN, pa.string())],
        metadata={SHARD_METADATA_KEY: info.to_json()},
    )
    cols = [pa.array(rows.keys, pa.uint64()), pa.array(rows.paths, pa.string()), pa.array(rows.rels, pa.string()),
            pa.array(rows.domains, pa.string()), pa.array(rows.classes, pa.string()),
            pa.array(rows.sizes, pa.int64()), pa.array(rows.mtimes_ns, pa.int64()),
            pa.array(rows.sha256s, pa.string()), emb, pa.array(rows.errors, pa.string()),
            pa.array(hashes, pa.string())]
    return pa.Table.from_arrays(cols, schema=schema)


def write_shard(folder: str | os.PathLike, rows: ShardRows, info: ShardInfo) -> Path:
    """Write ``rows`` as a new shard in ``folder`` (created if needed), atomically; returns its path."""
    import_pyarrow()

    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    now = time.time_ns()
    info = ShardInfo(**{**asdict(info), "written_ns": now, "rows": len(rows)})
    buf = io.BytesIO()
    pq.write_table(_table(rows, info), buf, compression="zstd", write_page_checksum=True)
    return atomic_write_bytes(out / f"part-{now:020d}-{os.getpid()}-{uuid.uuid4().hex[:8]}.parquet", buf.getvalue())


def shard_sha256(path: str | os.PathLike) -> str:
    """SHA-256 (hex) of a shard file's bytes: what a run records in its ``run.json``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def shard_width(path: str | os.PathLike) -> int:
    """The width ``D`` of the shard's ``embedding`` column as stored (``fixed_size_list<float32>[D]``)."""
    import_pyarrow()

    try:
        field_ = pq.read_schema(path).field("embedding")
        return int(field_.type.list_size)
    except Exception as e:  # a foreign or damaged file
        raise ShardDamagedError(Path(path), f"has no readable embedding column ({_reason(e)})") from None


def read_shard_info(path: str | os.PathLike) -> ShardInfo:
    """The :class:`ShardInfo` of one shard; ``ContractError`` when it is not a readable tki shard."""
    import_pyarrow()

    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for a truncated or foreign file
        raise ContractError(f"{path} is not a readable Parquet file ({type(e).__name__})") from None
    raw = (schema.metadata or {}).get(SHARD_METADATA_KEY)
    if raw is None:
        raise ContractError(f"{path} is a Parquet file without tki shard metadata")
    return ShardInfo.from_json(raw, str(path))


def list_shards(folder: str | os.PathLike) -> list[Path]:
    """Shard files in ``folder`` in write order (name order); [] when the folder does not exist."""
    p = Path(folder)
    if not p.is_dir():
        return []
    return sorted(f for f in p.iterdir() if f.name.startswith("part-") and f.suffix == ".parquet")


def iter_shard_batches(
    path: str | os.PathLike, columns: Sequence[str] = SHARD_COLUMNS, batch_rows: int = 4096
) -> Iterator[dict[str, Any]]:
    """Rows of one shard in batches of at most ``batch_rows``: dicts of numpy arrays (``key`` uint64,
    ``size`` / ``mtime_ns`` int64, ``embedding`` float32 ``[n, D]`` with zero rows where null) and lists
    (strings, ``None`` for null). Memory stays at one batch.

    Every page's CRC is verified, and with ``embedding`` every good row's vector against its
    ``embedding_hash``; a page that fails, a file that cannot be decoded, a vector that differs from its hash
    or a width other than the metadata's raise :class:`ShardDamagedError` (one line naming the shard)."""
    import_pyarrow()

    try:
        pf = pq.ParquetFile(path, page_checksum_verification=True)
    except Exception as e:  # pyarrow raises several types for damaged files
        raise ShardDamagedError(Path(path), f"cannot be read ({_reason(e)})") from None
    try:
        schema = pf.schema_arrow
        names = set(schema.names)
        want = list(columns)
        _check_columns(Path(path), schema, want)
        check_hash = "embedding" in want and HASH_COLUMN in names
        if check_hash and HASH_COLUMN not in want:
            want.append(HASH_COLUMN)
        raw = (schema.metadata or {}).get(SHARD_METADATA_KEY)
        try:
            expect_rows = ShardInfo.from_json(raw, str(path)).rows if raw is not None else -1
        except ContractError as e:
            raise ShardDamagedError(Path(path), f"is damaged ({e})") from None
        if expect_rows >= 0 and pf.metadata.num_rows != expect_rows:
            raise ShardDamagedError(Path(path), f"is damaged (its footer counts {pf.metadata.num_rows} rows, "
                                    f"it was written with {expect_rows})")
        batches = pf.iter_batches(batch_size=batch_rows, columns=want)
        seen = 0
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                if expect_rows >= 0 and seen != expect_rows:
                    raise ShardDamagedError(Path(path), f"is damaged ({seen} rows read, it was written with "
                                            f"{expect_rows})") from None
                return
            except Exception as e:  # a page checksum, a decompression or a decoding failure
                raise ShardDamagedError(Path(path), f"is damaged ({_reason(e)})") from None
            seen += batch.num_rows
            yield _batch_dict(Path(path), batch, want, check_hash)
    finally:
        pf.close()


def _check_columns(path: Path, schema: Any, columns: Sequence[str]) -> None:
    """Refuse a shard whose columns ``columns`` are missing or of another type than the format's."""
    pa = import_pyarrow()
    expect = {"key": pa.uint64(), "size": pa.int64(), "mtime_ns": pa.int64()}
    for name in columns:
        if schema.get_field_index(name) < 0:
            raise ShardDamagedError(path, f"is damaged or not a tki shard (no single column {name!r})")
        t = schema.field(name).type
        ok = (t == expect[name] if name in expect else
              pa.types.is_fixed_size_list(t) and t.value_type == pa.float32() if name == "embedding" else
              t == pa.string())
        if not ok:
            raise ShardDamagedError(path, f"is damaged or not a tki shard (column {name!r} is {t})")


def _reason(e: BaseException) -> str:
    text = " ".join(str(e).split())[:160]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _batch_dict(path: Path, batch: Any, columns: Sequence[str], check_hash: bool) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in columns:
        col = batch.column(name)
        if name in ("key", "size", "mtime_ns"):
            out[name] = col.to_numpy(zero_copy_only=False).astype(np.uint64 if name == "key" else np.int64)
        elif name == "embedding":
            width = col.type.list_size
            filled = col.fill_null([0.0] * width) if col.null_count else col
            out[name] = filled.flatten().to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, width)
        else:
            out[name] = col.to_pylist()
    if check_hash:
        errors = out.get("error")
        for i, h in enumerate(out[HASH_COLUMN]):
            good = errors is None or errors[i] is None
            if good and (h is None or vector_hash(out["embedding"][i]) != h):
                raise ShardDamagedError(path, f"is damaged (row {i} of a batch: its vector differs from the hash "
                                        "written with it)")
    return out
