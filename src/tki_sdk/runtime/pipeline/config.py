"""The embedding job's configuration: one typed record that owns every default, bound and help text.

:class:`EmbedConfig` is what ``tki embed`` runs (:func:`tki_sdk.runtime.pipeline.job.embed_folder`); the
CLI builds its options from :data:`FIELD_HELP` and the field defaults, and :meth:`EmbedConfig.validate`
refuses a field out of bounds with a :class:`~tki_sdk.common.errors.ConfigError` naming the field
(the CLI names its flag instead). Paths are checked when the job starts, not here.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from tki_sdk.common.index_config import BACKEND_DEFAULTS, IndexConfig
from tki_sdk.runtime.index.backends import BACKENDS as BACKENDS_OF_INDEX, DEFAULT_BACKEND
from tki_sdk.runtime.engine.embedder import MAX_BATCH_SIZE
from tki_sdk.common.errors import ConfigError

__all__ = ["EmbedConfig", "FIELD_HELP", "BACKENDS", "DTYPES", "ENGINES", "MAX_BATCH_SIZE"]

BACKENDS = ("auto", "onnxruntime", "openvino", "tensorrt")
DTYPES = ("f32", "f16", "i8")
ENGINES = ("local", "ray")
#: Where a Ray run decodes images: in the model actors, in Ray tasks, or auto (actors on one node).
RAY_DECODE = ("auto", "actor", "tasks")
#: HNSW backends of a new gallery (:mod:`tki_sdk.runtime.index.backends`).
INDEXES = BACKENDS_OF_INDEX


@dataclass
class EmbedConfig:
    """One embedding run: what to embed, where to, with which model and engine, how to checkpoint.

    ``exact`` / ``dtype`` / ``connectivity`` / ``expansion_add``: for a new gallery (``None``: HNSW f32, the
    gallery's own defaults); an existing gallery keeps its own and refuses different explicit ones.
    ``shards``: where the run's shards go (default ``out/embed-run/shards``, removed after the commit; a
    folder given here is kept). See :data:`FIELD_HELP` for every field.
    """

    images: Path
    out: Path
    model: Path | None = None
    manifest: Path | None = None
    batch_size: int = 32
    workers: int | None = None
    threads: int | None = None
    backend: str = "auto"
    precision: str | None = None
    draft: bool = False
    exif_transpose: bool = False
    max_pixels: int | None = None
    exact: bool | None = None
    dtype: str | None = None
    index: str | None = None
    connectivity: int | None = None
    expansion_add: int | None = None
    overwrite: bool = False
    target_recall: float = IndexConfig.target_recall
    use_hash: bool = False
    prune: bool = False
    restart: bool = False
    shards: Path | None = None
    every: int = 1000
    seconds: float = 60.0
    wait: bool = True
    set_aside_damaged: bool = False
    engine: str = "local"
    address: str | None = None
    actors: int = 1
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    ray_decode: str = "auto"
    stall_seconds: float = 300.0
    progress: bool = False

    def validate(self) -> "EmbedConfig":
        """Refuse (:class:`ConfigError`, naming the field) a value out of bounds; returns ``self``."""
        if self.batch_size < 1:
            raise ConfigError("batch_size", f"must be >= 1 (got {self.batch_size})")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError("batch_size", f"must be at most {MAX_BATCH_SIZE:,} (got {self.batch_size:,})")
        for name in ("workers", "threads", "every", "actors", "max_pixels", "expansion_add"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(name, f"must be >= 1 (got {value})")
        if self.connectivity is not None and self.connectivity < 2:
            raise ConfigError("connectivity", f"must be >= 2 (got {self.connectivity})")
        if self.exact and (self.connectivity is not None or self.expansion_add is not None):
            field = "connectivity" if self.connectivity is not None else "expansion_add"
            raise ConfigError(field, "shapes an HNSW graph; an {exact} gallery has none", others=("exact",))
        if not self.seconds > 0:
            raise ConfigError("seconds", f"must be > 0 (got {self.seconds})")
        if not 0.0 <= self.target_recall <= 1.0:
            raise ConfigError("target_recall", f"must be between 0 and 1 (got {self.target_recall})")
        if not self.stall_seconds > 0:
            raise ConfigError("stall_seconds", f"must be > 0 (got {self.stall_seconds})")
        for name, allowed in (("backend", BACKENDS), ("dtype", DTYPES), ("engine", ENGINES),
                              ("ray_decode", RAY_DECODE), ("index", INDEXES)):
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(name, f"must be one of {', '.join(allowed)} (got {value!r})")
        if not self.cpus_per_actor > 0:
            raise ConfigError("cpus_per_actor", f"must be > 0 (got {self.cpus_per_actor})")
        if not self.gpus_per_actor >= 0:
            raise ConfigError("gpus_per_actor", f"must be >= 0 (got {self.gpus_per_actor})")
        if self.engine != "ray":
            for name in ("address", "actors", "gpus_per_actor"):
                if getattr(self, name) != _DEFAULTS[name]:
                    raise ConfigError(name, "needs the ray engine")
        return self

    @property
    def preprocess(self) -> dict[str, object]:
        """The Embedder's ``preprocess`` overrides this run asks for."""
        pre: dict[str, object] = {"draft": bool(self.draft), "exif_transpose": bool(self.exif_transpose)}
        if self.max_pixels is not None:
            pre["max_pixels"] = int(self.max_pixels)
        return pre

    @property
    def graph_options(self) -> dict[str, int]:
        """``connectivity`` / ``expansion_add`` as Gallery keyword arguments (only those set)."""
        return {k: int(v) for k, v in (("connectivity", self.connectivity), ("expansion_add", self.expansion_add))
                if v is not None}


_DEFAULTS = {f.name: f.default for f in fields(EmbedConfig)}


def _backend_defaults(name: str) -> str:
    """``"; faiss: 24"``: the backends whose default for ``name`` differs (IndexConfig.for_backend), or ``""``."""
    return "".join(f"; {b}: {d[name]}" for b, d in BACKEND_DEFAULTS.items() if name in d)

#: What each field means, as the CLI's help shows it (the CLI appends the default).
FIELD_HELP = {
    "model": "export folder written by tki-export (holds tki.json)",
    "images": "folder of images (searched recursively)",
    "out": "gallery folder to write or update",
    "manifest": "embed the paths listed in a CSV (column 'path', or one per line) or Parquet file (column 'path') "
                "instead of listing the images folder; relative paths are under it",
    "batch_size": f"images per model call (at most {MAX_BATCH_SIZE:,})",
    "workers": "decode threads (default min(8, cores))",
    "threads": "inference threads on CPU",
    "backend": "inference engine (auto: on a CPU the fastest artifact and engine that passed parity, measured once "
               "and cached; `tki info --model M` says which and why)",
    "precision": "model artifact from tki.json: fp32, fp16, int8, openvino_int8, tensorrt_fp16 (default: the engine "
                 "choice, else the export's default)",
    "draft": "fast reduced-scale JPEG decoding (slightly different pixels)",
    "exif_transpose": "apply EXIF orientation (open_clip does not)",
    "max_pixels": "refuse images declaring more pixels than this (default: Pillow's 89,478,485)",
    "exact": "new gallery: flat index searched by brute force (no HNSW graph)",
    "dtype": "new gallery: vector storage (default f32)",
    "index": f"new gallery: HNSW backend (default {DEFAULT_BACKEND} for f32, usearch for f16 / i8: faiss and "
             "hnswlib store f32 only)",
    "connectivity": f"new gallery: neighbours per node (default {IndexConfig.connectivity}"
                    f"{_backend_defaults('connectivity')})",
    "expansion_add": f"new gallery: candidates considered per insert (default {IndexConfig.expansion_add}"
                     f"{_backend_defaults('expansion_add')})",
    "overwrite": "rebuild the gallery from scratch",
    "target_recall": "tune HNSW ef_search for this recall@10 on leave-one-out queries whenever the gallery changes "
                     "(0: keep the current ef_search)",
    "use_hash": "detect changed files by a SHA-256 of their content instead of size and modification time",
    "prune": "remove items whose file is gone",
    "restart": "discard an unfinished run in <out>/embed-run",
    "shards": "write the embedding shards (Parquet) here and keep them (default: <out>/embed-run/shards, removed "
              "once the gallery is saved)",
    "every": "write a checkpoint shard every N images",
    "seconds": "... or every T seconds, whichever comes first",
    "wait": "when another run is writing the gallery, wait for it (one writer per gallery, from listing to the last "
            "save; searches never wait); off: refuse at once",
    "set_aside_damaged": "resume past a damaged checkpoint shard: move it to <out>/embed-run/damaged and embed its "
                         "rows again (default: refuse, naming it)",
    "engine": "local: this process; ray: Ray Data tasks decode, an actor pool runs the model",
    "address": "Ray cluster to attach to (e.g. ray://head:10001 or auto); default: $RAY_ADDRESS, else a local Ray "
               "on this machine",
    "actors": "model actors",
    "cpus_per_actor": "CPUs reserved per actor",
    "gpus_per_actor": "GPUs per actor; > 0 runs the model on onnxruntime's CUDA provider",
    "ray_decode": "where images are decoded: in the model actors, in Ray tasks, or auto (actors on one node)",
    "stall_seconds": "stop the run when Ray returns no result for T seconds",
    "progress": "show progress bars",
}
