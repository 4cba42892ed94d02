"""``tki embed`` as one library call: :func:`embed_folder` checks the paths, builds the Embedder, the shard
metadata, the gallery factory and the engine (this process, or Ray Data), runs the job
(:func:`~tki_sdk.runtime.pipeline.embed_run.run_job`) and returns its
:class:`~tki_sdk.runtime.pipeline.embed_run.JobReport`. Errors are
:class:`~tki_sdk.runtime.pipeline.errors.PipelineError` s (one line, an exit status, configuration fields as
``{field}`` tokens); Ctrl-C propagates (the completed checkpoints are kept). Nothing here prints.

Example::

    from tki_sdk.runtime.pipeline import EmbedConfig, embed_folder
    report = embed_folder(EmbedConfig(images=Path("photos"), out=Path("photos.gallery"), model=Path("export")))
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from tki_sdk.common.errors import EXIT_DAMAGED, EXIT_FAILED, one_line
from tki_sdk.common.imagefolders import walk_images
from tki_sdk.common.model_metadata import METADATA_FILE, ModelMetadata
from tki_sdk.runtime.engine.artifact_check import ArtifactCheckError
from tki_sdk.runtime.engine.embedder import Embedder
from tki_sdk.runtime.index.gallery import Gallery
from tki_sdk.runtime.index.store import is_empty_dir, is_gallery
from tki_sdk.runtime.pipeline import distributed
from tki_sdk.runtime.pipeline.config import EmbedConfig
from tki_sdk.runtime.index.backends import default_backend
from tki_sdk.runtime.pipeline.embed_run import Checkpointer, Engine, JobReport, check_same_graph, embed_local, run_job
from tki_sdk.common.extras import MissingExtraError
from tki_sdk.runtime.pipeline.errors import PipelineError
from tki_sdk.runtime.pipeline.ingest import SourceFile, gallery_options
from tki_sdk.runtime.pipeline.protocols import EmbedderLike
from tki_sdk.runtime.pipeline.shards import ShardInfo

__all__ = ["embed_folder", "make_embedder", "describe_embedder", "check_paths", "model_record", "local_engine",
           "ray_engine"]

log = logging.getLogger(__name__)

_IMAGE_KINDS = ".jpg, .png, .gif, .bmp, .tif, .webp, ..."


def embed_folder(config: EmbedConfig, *, embedder: Embedder | None = None) -> JobReport:
    """Run what ``tki embed`` runs (see the module docstring). ``embedder``: one already built for
    ``config`` (:func:`make_embedder`), e.g. to report which engine runs before the work starts."""
    config.validate()
    check_paths(config)
    emb = embedder if embedder is not None else make_embedder(config)
    info, new_gallery = model_record(emb, config)
    engine = local_engine(emb, config) if config.engine == "local" else ray_engine(emb, config)
    out = Path(config.out)
    try:
        return run_job(config, info, engine, new_gallery)
    except PipelineError:
        raise
    except OSError as e:  # a full disk, an I/O error while checkpointing or saving
        kept = "the gallery is unchanged" if is_gallery(out) else "no gallery was written"
        raise PipelineError(f"cannot write gallery {out}: {one_line(e)}; {kept}; completed checkpoints in "
                            f"{out}/embed-run are kept for the next run", code=EXIT_FAILED) from None
    except ImportError as e:
        raise _missing(e, "runtime") from None
    except ValueError as e:
        raise PipelineError(one_line(e), code=EXIT_FAILED) from None


def _model_dir(config: EmbedConfig) -> Path:
    if config.model is None:
        raise PipelineError("{model} is not set: give the export folder written by tki-export", fields=("model",))
    p = Path(config.model)
    if not p.exists():
        raise PipelineError(f"{{model}} {p} does not exist; give the folder written by tki-export", fields=("model",))
    if p.is_dir() and not (p / METADATA_FILE).is_file():
        raise PipelineError(f"{{model}} {p} has no {METADATA_FILE}; give the folder written by tki-export",
                            fields=("model",))
    return p


def check_paths(config: EmbedConfig) -> None:
    """Refuse, before loading the model, paths that cannot work: the images folder, ``out`` (a file, a foreign
    folder, not writable), the manifest, a folder without images, a gallery of another model or graph; and
    the Ray engine without Ray (:class:`~tki_sdk.common.extras.MissingExtraError`)."""
    images, out = Path(config.images), Path(config.out)
    _model_dir(config)
    if config.engine == "ray":
        distributed.import_ray()
    if not images.is_dir():
        raise PipelineError(f"{{images}} {images} does not exist or is not a folder", fields=("images",))
    if out.exists() and not is_gallery(out) and not (out.is_dir() and is_empty_dir(out)):
        raise PipelineError(f"{{out}} {out} exists and is not a gallery; choose a new path", fields=("out",))
    check_writable(out)
    if config.manifest is not None and not Path(config.manifest).is_file():
        raise PipelineError(f"{{manifest}} {config.manifest} is not a file", fields=("manifest",))
    if config.manifest is None and not is_gallery(out) and next(iter(walk_images(images)), None) is None:
        raise PipelineError(f"no image files under {images} (looked for {_IMAGE_KINDS})")
    if is_gallery(out) and not config.overwrite:
        try:
            built = Gallery.read_info(out)
            want = ModelMetadata.load(_model_dir(config)).fingerprint()
        except (OSError, ValueError) as e:
            raise PipelineError(f"cannot read {out} or {config.model}: {one_line(e)}") from None
        found = built.get("model_fingerprint")
        if found and found != want:
            raise PipelineError(f"gallery {out} was built with another model ({found[:12]}); use {{overwrite}} to "
                                "rebuild it with this one", fields=("overwrite",))
        check_same_graph(out, built, connectivity=config.connectivity, expansion_add=config.expansion_add)


def check_writable(out: Path, field: str = "out") -> None:
    """Refuse (naming ``field``), before any work, a gallery path whose nearest existing folder is a file or
    cannot be written."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise PipelineError(f"{{{field}}} {out}: {probe} is a file, not a folder; choose another", fields=(field,))
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise PipelineError(f"{{{field}}} {out}: folder {probe} is not writable; choose another", fields=(field,))


def _missing(e: ImportError, extra: str) -> MissingExtraError:
    """``e`` itself when it already is the project's :class:`MissingExtraError` (it names its extra), else
    ``e`` as one naming ``extra``."""
    return e if isinstance(e, MissingExtraError) else MissingExtraError(one_line(e), extra)


def make_embedder(config: EmbedConfig) -> Embedder:
    """The Embedder ``config`` asks for (the Ray engine's driver copy runs on one CPU thread: it only
    describes the model; the actors embed)."""
    model = _model_dir(config)
    config.validate()
    extra: dict[str, object] = ({"providers": ["CPUExecutionProvider"], "threads": 1} if config.engine == "ray"
                                else {"threads": config.threads})
    try:
        emb = Embedder(model, backend=config.backend, precision=config.precision, preprocess=config.preprocess,
                       **extra)  # type: ignore[arg-type]
    except ArtifactCheckError as e:
        raise PipelineError(str(e), code=EXIT_DAMAGED) from None
    except ImportError as e:
        raise _missing(e, "runtime") from None
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        raise PipelineError(one_line(e)) from None
    log.info("%s", describe_embedder(emb))
    return emb


def describe_embedder(emb: Embedder) -> str:
    """One line: the model, its artifact and engine, and why that engine was chosen."""
    choice = emb.engine_choice
    return (f"model: {emb.metadata.model_name} ({emb.precision}, {emb.model_path.name}) on {emb.backend} / "
            f"{emb.provider}" + (f" ({choice.source}: {choice.reason})" if choice is not None and choice.precision else ""))


def model_record(emb: EmbedderLike, config: EmbedConfig) -> tuple[ShardInfo, Callable[[], Gallery]]:
    """The shard metadata for ``emb``'s embeddings and a factory of an empty gallery for them."""
    opts = gallery_options(emb, exact=bool(config.exact), dtype=config.dtype or "f32",
                           index=config.index or default_backend(config.dtype or "f32"), **config.graph_options)
    info = ShardInfo(model_fingerprint=emb.model_fingerprint, embedding_dim=emb.embedding_dim, metric=opts["metric"],
                     model=opts["model_info"], images_root=str(Path(config.images).resolve()), engine=config.engine)

    def new_gallery() -> Gallery:
        try:
            return Gallery(**opts)
        except ValueError as e:
            raise PipelineError(one_line(e)) from None

    return info, new_gallery


def local_engine(emb: EmbedderLike, config: EmbedConfig) -> Engine:
    """This process embeds (:func:`~tki_sdk.runtime.pipeline.embed_run.embed_local`)."""

    def engine(todo: Sequence[SourceFile], checkpoints: Checkpointer) -> int:
        return embed_local(todo, emb, checkpoints, batch_size=config.batch_size, workers=config.workers,
                           progress=config.progress)

    return engine


def ray_engine(emb: Embedder, config: EmbedConfig) -> Engine:
    """Ray Data decodes and an actor pool embeds (:mod:`tki_sdk.runtime.pipeline.distributed`)."""
    opts = distributed.RayOptions(
        model_dir=str(emb.model_dir), precision=emb.precision, preprocess=config.preprocess,
        address=config.address, actors=config.actors, cpus_per_actor=config.cpus_per_actor,
        gpus_per_actor=config.gpus_per_actor, threads=config.threads, batch_size=config.batch_size,
        stall_seconds=config.stall_seconds, decode=config.ray_decode,
    )

    def engine(todo: Sequence[SourceFile], checkpoints: Checkpointer) -> int:
        try:
            return distributed.embed_ray(todo, checkpoints, opts, progress=config.progress)
        except ImportError as e:
            raise _missing(e, "distributed") from None

    return engine
