"""``tki embed``, ``tki index`` and ``tki search`` (torch-free), plus ``describe(path)`` for ``tki info``.

The ``tki`` console script adds these with :func:`register`; :func:`main` runs them standalone
(``python -m tki_sdk.cli.runtime embed ...``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tki_sdk.cli.base import OneLineParser, configure_logging, print_error, run_main
from tki_sdk.common.cpu import cpu_info
from tki_sdk.common.errors import (
    EXIT_DAMAGED,
    EXIT_INTERRUPTED,
    EXIT_MISSING,
    ConfigError,
    UsageError,
    one_line,
    printable,
)
from tki_sdk.common.extras import MissingExtraError
from tki_sdk.common.imagefolders import SkippedEntry, list_images
from tki_sdk.common.model_metadata import METADATA_FILE, ModelMetadata
from tki_sdk.runtime.pipeline.config import (
    BACKENDS,
    DTYPES,
    ENGINES,
    FIELD_HELP,
    INDEXES,
    RAY_DECODE,
    EmbedConfig,
)
from tki_sdk.runtime.pipeline.embed_run import JobReport
from tki_sdk.runtime.pipeline.errors import PipelineError

__all__ = ["register", "describe", "describe_or_refuse", "main", "parse_where", "INFO_EXAMPLE", "VERIFY_HELP"]

EMBED_EXAMPLE = """example:
  tki embed --model export/ --images data/pacs/images --out pacs.gallery --batch-size 64 --threads 2 \\
      --errors skipped.jsonl
  tki embed --model export/ --images data/pacs/images --out pacs.gallery --prune      # later: only what changed
  tki embed --model export/ --images /shared/photos --out /shared/photos.gallery --engine ray --actors 4

Builds or updates a gallery from every image file under --images (or the paths in --manifest). Folders
<domain>/<class>/<file> fill the metadata fields "domain" and "class" (<class>/<file> fills "class").
An item's key is a hash of its path relative to --images, so a re-run embeds only new and changed files
(size or modification time differ; with --hash: content differs) and --prune removes deleted ones.
Progress is checkpointed into <out>/embed-run/ every --checkpoint-every images or --checkpoint-seconds:
re-running a killed run resumes it. Unreadable files are skipped and listed at the end with their reason;
the exit status is 0 when the gallery holds at least one image."""

INDEX_EXAMPLE = """example:
  tki index --from-parquet shards/ --gallery photos.gallery
  tki index --from-parquet /shared/run1/shards --gallery photos.gallery --dtype i8

Builds a gallery from embedding shards (Parquet files written by tki embed --shards, either engine), or
updates an existing one: a row replaces the item of its key, later shards win over earlier ones, rows with
an error are reported and remove the key's old item. Reads one batch of rows at a time."""

SEARCH_EXAMPLE = """example:
  tki search --gallery pacs.gallery --model export/ --image query.jpg -k 5 --where domain=sketch
  tki search --gallery pacs.gallery --model export/ --images queries/ --where class=dog,horse --json
  tki search --gallery pacs.gallery --model export/ --text "a horse" --text "a guitar" -k 5 --where domain=sketch

--text searches by words (repeatable; exports with a text encoder: tki-export writes one unless --no-text).
--text-template says how a query becomes text for the model: raw (as typed), ensemble (TKI: the query in each
learned domain prompt "a [DOMAIN]_p style of {}.", the embeddings averaged), or a template holding {} such as
"a photo of a {}."; default: the export's (the ensemble for a TKI head, "a photo of a {}." for vanilla CLIP).

--where NAME=VALUE keeps gallery items whose metadata field NAME equals VALUE (VALUE may be a comma list:
any of them); several --where options must all hold (at most 32 fields, 900 values). --json prints one JSON
object per query. -k is at most 100,000 and capped by the gallery size. Paths and metadata are printed with
control characters escaped (\n, \x1b). Exit status: 0 results printed, 1 no query could be read, 2 bad input,
4 the gallery or the model file is damaged (the message names the file)."""


INFO_EXAMPLE = """example:
  tki info export/
  tki info --verify pacs.gallery

Checks every file against what tki.json / gallery.json records: sizes (galleries up to 64 MiB: SHA-256 too)
by default, SHA-256 of every file with --verify. Exit status: 0 described (and verified), 2 not a checkpoint,
export or gallery, 4 a file is damaged or changed (the message names it and what to do)."""

NO_WAIT_HELP = ("refuse (exit 2) instead of waiting when another run is writing the gallery (one writer per "
                "gallery, from listing to the last save; searches never wait)")

VERIFY_HELP = "check the SHA-256 of every file against tki.json / gallery.json (reads them all once)"


# ---------------------------------------------------------------------------------------------- parsers
#: The one place a field of :class:`~tki_sdk.runtime.pipeline.config.EmbedConfig` gets its flag: the embed
#: options are built from it and pipeline errors name flags through it.
EMBED_FLAGS = {
    "model": "--model", "images": "--images", "out": "--out", "manifest": "--manifest", "batch_size": "--batch-size",
    "workers": "--workers", "threads": "--threads", "backend": "--backend", "precision": "--precision",
    "draft": "--draft", "exif_transpose": "--exif-transpose", "max_pixels": "--max-pixels", "exact": "--exact",
    "dtype": "--dtype", "connectivity": "--connectivity", "expansion_add": "--expansion-add",
    "overwrite": "--overwrite", "target_recall": "--target-recall", "use_hash": "--hash", "prune": "--prune",
    "restart": "--restart", "shards": "--shards", "every": "--checkpoint-every", "seconds": "--checkpoint-seconds",
    "wait": "--no-wait", "set_aside_damaged": "--set-aside-damaged", "engine": "--engine", "address": "--address",
    "actors": "--actors", "cpus_per_actor": "--cpus-per-actor", "gpus_per_actor": "--gpus-per-actor",
    "ray_decode": "--ray-decode", "stall_seconds": "--stall-seconds", "index": "--index",
}
_METAVARS = {"model": "DIR", "images": "DIR", "out": "GALLERY", "manifest": "FILE", "batch_size": "N",
             "workers": "N", "threads": "N", "precision": "P", "max_pixels": "N", "connectivity": "M",
             "expansion_add": "EF", "target_recall": "R", "shards": "DIR", "every": "N", "seconds": "T",
             "address": "ADDR", "actors": "N", "cpus_per_actor": "C", "gpus_per_actor": "G", "stall_seconds": "T"}
_CHOICES = {"backend": BACKENDS, "dtype": DTYPES, "engine": ENGINES, "ray_decode": RAY_DECODE, "index": INDEXES}
_EMBED_DEFAULTS = {f.name: f.default for f in dataclasses.fields(EmbedConfig)}


def _embed_option(p: Any, name: str, required: bool = False) -> None:
    """Add the flag of ``EmbedConfig.<name>``: its type, default and help come from the config."""
    flag, default, text = EMBED_FLAGS[name], _EMBED_DEFAULTS[name], FIELD_HELP[name]
    if name == "wait":
        p.add_argument(flag, action="store_false", dest=name, help=f"do not wait: {text.split('; off: ')[-1]} "
                       "(exit 2); by default " + text.split("; off: ")[0])
        return
    if name == "exact":
        p.add_argument(flag, action="store_true", default=None, dest=name, help=text)
        return
    if isinstance(default, bool):
        p.add_argument(flag, action="store_true", dest=name, help=text)
        return
    kind = {"batch_size": int, "workers": int, "threads": int, "max_pixels": int, "connectivity": int,
            "expansion_add": int, "every": int, "actors": int, "target_recall": float, "seconds": float,
            "cpus_per_actor": float, "gpus_per_actor": float, "stall_seconds": float}.get(name, str)
    shown = "" if required or default is None or "default" in text else f" (default {default:g})" if isinstance(default, float) \
        else f" (default {default})"
    p.add_argument(flag, dest=name, type=kind, default=None if required else default, required=required,
                   metavar=_METAVARS.get(name), choices=_CHOICES.get(name), help=text + shown)


def _add_embed(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "embed",
        help="embed a folder of images into a searchable gallery (torch-free)",
        description="Embed every image under a folder with an exported TKI model and save a usearch gallery.",
        epilog=EMBED_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name in ("model", "images", "out"):
        _embed_option(p, name, required=True)
    for name in ("manifest", "batch_size", "backend", "precision", "threads", "draft", "exif_transpose",
                 "max_pixels", "workers"):
        _embed_option(p, name)
    p.add_argument("--errors", metavar="FILE", help="also write skipped files as JSON lines {path, reason}")
    for name in ("exact", "dtype", "index", "overwrite", "target_recall"):
        _embed_option(p, name)
    g = p.add_argument_group("HNSW graph", GRAPH_HELP)
    for name in ("connectivity", "expansion_add"):
        _embed_option(g, name)
    g = p.add_argument_group("incremental runs and checkpoints")
    for name in ("use_hash", "prune", "every", "seconds", "shards", "restart", "set_aside_damaged", "wait"):
        _embed_option(g, name)
    r = p.add_argument_group("Ray Data engine (pip install 'tki-sdk[distributed]')")
    for name in ("engine", "address", "actors", "cpus_per_actor", "gpus_per_actor", "ray_decode", "stall_seconds"):
        _embed_option(r, name)
    p.set_defaults(func=run_embed)
    return p


def _add_index(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "index",
        help="build or update a gallery from embedding shards (Parquet)",
        description="Build or update a gallery from the Parquet shards written by tki embed (either engine).",
        epilog=INDEX_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--from-parquet", required=True, metavar="DIR", dest="from_parquet",
                   help="folder of shards (part-*.parquet)")
    p.add_argument("--gallery", required=True, metavar="G", help="gallery folder to create or update")
    p.add_argument("--exact", action="store_true", default=None, help="new gallery: flat index (brute force)")
    p.add_argument("--dtype", default=None, choices=["f32", "f16", "i8"], help="new gallery: vector storage (default f32)")
    p.add_argument("--errors", metavar="FILE", help="also write the failed rows as JSON lines {path, reason}")
    p.add_argument("--no-wait", action="store_true", dest="no_wait", help=NO_WAIT_HELP)
    _add_graph_options(p)
    p.set_defaults(func=run_index)
    return p


def _add_search(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "search",
        help="search a gallery with query images (torch-free)",
        description="Embed query images with the gallery's model and print the nearest gallery items.",
        epilog=SEARCH_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--gallery", required=True, metavar="G", help="gallery folder written by tki embed")
    p.add_argument("--model", required=True, metavar="DIR", help="export folder of the model that built the gallery")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--image", nargs="+", metavar="FILE", help="query image file(s)")
    q.add_argument("--images", metavar="DIR", help="folder of query images")
    q.add_argument("--text", action="append", metavar="WORDS",
                   help="query by words, e.g. --text \"a horse\" (repeatable: one query each)")
    p.add_argument("--text-template", default=None, metavar="T",
                   help="how --text becomes the model's text: raw, ensemble, or a template with {} "
                        "(default: the export's: ensemble for a TKI head, 'a photo of a {}.' for vanilla CLIP)")
    p.add_argument("-k", type=int, default=10, metavar="N",
                   help="hits per query (default 10; at most 100,000, capped by the gallery size)")
    p.add_argument("--where", action="append", default=[], metavar="NAME=VALUE",
                   help="metadata filter, e.g. domain=sketch or class=dog,horse (repeatable: all must hold)")
    p.add_argument("--json", action="store_true", help="print one JSON object per query instead of text")
    _add_model_options(p)
    p.set_defaults(func=run_search)
    return p


def _add_model_options(p: argparse.ArgumentParser) -> None:
    for name in ("backend", "precision", "threads", "draft", "exif_transpose", "max_pixels"):
        _embed_option(p, name)


def register(subparsers: Any) -> None:
    """Add the ``embed``, ``search`` and ``index`` subcommands to a ``tki`` argparse subparsers object.

    Each sets ``func``; the caller runs ``sys.exit(args.func(args))``. Handlers print one line on stderr and
    return a non-zero status for bad input (they raise nothing).
    """
    _add_embed(subparsers)
    _add_search(subparsers)
    _add_index(subparsers)


# ---------------------------------------------------------------------------------------------- helpers
def _check_model_dir(path: str) -> Path:

    p = Path(path)
    if not p.exists():
        raise UsageError(f"model folder {p} does not exist; pass the folder written by tki-export")
    if p.is_dir() and not (p / METADATA_FILE).is_file():
        raise UsageError(f"{p} has no {METADATA_FILE}; pass the folder written by tki-export")
    return p


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1 (got {value})")


def _preprocess_options(args: argparse.Namespace) -> dict[str, Any]:
    pre: dict[str, Any] = {"draft": bool(args.draft), "exif_transpose": bool(args.exif_transpose)}
    if args.max_pixels is not None:
        _positive("--max-pixels", args.max_pixels)
        pre["max_pixels"] = int(args.max_pixels)
    return pre


def _make_embedder(args: argparse.Namespace) -> Any:
    from tki_sdk.runtime.engine.artifact_check import ArtifactCheckError
    from tki_sdk.runtime.engine.embedder import Embedder

    model = _check_model_dir(args.model)
    _positive("--threads", args.threads)
    pre = _preprocess_options(args)
    extra: dict[str, Any] = {"threads": args.threads}
    try:
        emb = Embedder(model, backend=args.backend, precision=args.precision, preprocess=pre, **extra)
    except ArtifactCheckError as e:
        raise UsageError(str(e), code=EXIT_DAMAGED) from None
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    print(
        f"model: {emb.metadata.model_name} ({emb.precision}, {emb.model_path.name}) on {emb.backend} / {emb.provider}"
        + (f" ({emb.engine_choice.source}: {emb.engine_choice.reason})"
           if emb.engine_choice is not None and emb.engine_choice.precision else ""),
        file=sys.stderr,
    )
    return emb


def parse_where(items: Sequence[str]) -> dict[str, list[Any]] | None:
    """``["domain=sketch", "class=dog,horse"]`` -> ``{"domain": ["sketch"], "class": ["dog", "horse"]}``.

    A value that reads as a JSON number or boolean also matches that number / boolean (``label=3`` matches
    metadata ``"3"`` and ``3``). Raises :class:`UsageError` on a malformed item.
    """
    if not items:
        return None
    where: dict[str, list[Any]] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name or not value.strip():
            raise UsageError(f"--where {item!r}: expected NAME=VALUE, e.g. --where domain=sketch")
        vals: list[Any] = where.setdefault(name, [])
        for v in (s.strip() for s in value.split(",")):
            if not v:
                raise UsageError(f"--where {item!r}: empty value in the list")
            vals.append(v)
            try:
                parsed = json.loads(v)
            except ValueError:
                continue
            if isinstance(parsed, (int, float, bool)):
                vals.append(parsed)
    return where


# ---------------------------------------------------------------------------------------------- embed
#: How ``tki index`` names the fields its pipeline errors mention (it has no --overwrite of its own).
INDEX_FLAGS = {"overwrite": "a new --gallery path", "gallery": "--gallery", "connectivity": "--connectivity",
               "expansion_add": "--expansion-add", "wait": "--no-wait", "exact": "--exact", "dtype": "--dtype"}


def _guarded(prog: str, run: Any, args: argparse.Namespace, interrupted: str,
             flags: dict[str, str] | None = None) -> int:
    """Run a command; a :class:`UsageError` or Ctrl-C becomes one line on stderr and its exit status."""
    try:
        return run(args)
    except (PipelineError, ConfigError) as e:
        print_error(prog, e.render(EMBED_FLAGS if flags is None else flags))
        return e.code
    except MissingExtraError as e:
        print_error(prog, e)
        return EXIT_MISSING
    except UsageError as e:
        print_error(prog, e)
        return e.code
    except KeyboardInterrupt:
        print_error(prog, interrupted)
        return EXIT_INTERRUPTED


def run_embed(args: argparse.Namespace) -> int:
    """``tki embed``: returns the exit status."""
    return _guarded("tki embed", _run_embed, args, "interrupted; re-run the same command to resume")


def _open_errors_file(path: str) -> Any:
    """Open ``--errors FILE`` for writing now, so a bad path fails before the embedding run."""
    try:
        return open(path, "w")
    except OSError as e:
        raise UsageError(f"cannot write --errors {path}: {e.strerror or e}") from None



#: Measured on 100k embedding-shaped 512-d vectors, 2 cores (benchmarks/results/search/build_tradeoff_ea*.json).
GRAPH_HELP = """\
new HNSW galleries: graph construction (usearch M and efConstruction). A lower
--expansion-add builds faster and searches slower at the same recall; 100k x 512,
2 cores, f32, recall@10 0.99:  128 (default): 1,668 vectors/s built, 2,672 queries/s;
64: 2,820/s, 2,058 q/s;  40: 4,058/s, 1,692 q/s."""


def _add_graph_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("HNSW graph", GRAPH_HELP)
    g.add_argument("--connectivity", type=int, default=None, metavar="M",
                   help="new gallery: neighbours per node (default 16)")
    g.add_argument("--expansion-add", type=int, default=None, metavar="EF", dest="expansion_add",
                   help="new gallery: candidates considered per insert (default 128)")


def _graph_options(args: argparse.Namespace) -> dict[str, int]:
    """``--connectivity`` / ``--expansion-add`` as Gallery keyword arguments (only those given)."""
    opts = {k: v for k, v in (("connectivity", args.connectivity), ("expansion_add", args.expansion_add))
            if v is not None}
    if "connectivity" in opts and opts["connectivity"] < 2:
        raise UsageError(f"--connectivity must be >= 2 (got {opts['connectivity']})")
    _positive("--expansion-add", args.expansion_add)
    if opts and args.exact:
        raise UsageError("--connectivity and --expansion-add shape an HNSW graph; an --exact gallery has none")
    return opts


def embed_config(args: argparse.Namespace) -> EmbedConfig:
    """The :class:`EmbedConfig` of parsed ``tki embed`` arguments (every field under its own name)."""
    values = {name: getattr(args, name) for name in EMBED_FLAGS}
    for name in ("model", "images", "out", "manifest", "shards"):
        if values[name] is not None:
            values[name] = Path(values[name])
    return EmbedConfig(**values, progress=True)


def _run_embed(args: argparse.Namespace) -> int:
    from tki_sdk.runtime.pipeline.job import (
        check_paths,
        describe_embedder,
        embed_folder,
        make_embedder,
    )

    config = embed_config(args)
    config.validate()
    check_paths(config)
    errors_f = _open_errors_file(args.errors) if args.errors else None
    try:
        emb = make_embedder(config)
        print(describe_embedder(emb), file=sys.stderr)
        try:
            rep = embed_folder(config, embedder=emb)
        except KeyboardInterrupt:
            print_error("tki embed", f"interrupted; the checkpoints in {config.out}/embed-run are kept: re-run the "
                        "same command to resume")
            return EXIT_INTERRUPTED
        print_report(rep, config.out)
        _write_errors(errors_f, args.errors, rep.failed, saved=config.out)
        return 0
    finally:
        if errors_f is not None:
            try:
                errors_f.close()
            except OSError:
                pass  # already reported by _write_errors


def print_report(rep: JobReport, out: Path, file: Any = None) -> None:
    """The run's summary lines (counts, failed files, rate) on ``file`` (default stderr)."""
    file = file if file is not None else sys.stderr
    if rep.failed:
        print(f"skipped {len(rep.failed)} of {rep.listed} files:", file=file)
        for path, reason in rep.failed:
            print(f"  {printable(path)}: {printable(reason)}", file=file)
    rate = rep.embedded / rep.embed_s if rep.embed_s > 0 else 0.0
    print(f"added {rep.added}, updated {rep.updated}, unchanged {rep.unchanged}, pruned {rep.pruned}, "
          f"failed {len(rep.failed)}" + (f" (resumed {rep.resumed} from checkpoints)" if rep.resumed else "")
          + (f"; {rep.deleted_kept} deleted files still indexed (pass --prune to remove them)" if rep.deleted_kept else ""),
          file=file)
    print(f"indexed {rep.added + rep.updated} of {rep.listed} images into {out} ({rep.gallery_items} items) in "
          f"{rep.wall_s:.1f} s (embedded {rep.embedded} at {rate:.1f} img/s, {rep.shards_written} checkpoint(s); "
          f"index {rep.index_s:.1f} s)", file=file)


def _write_errors(f: Any, name: str | None, errors: Sequence[tuple[Any, str]], saved: Path | None = None) -> None:
    """Write the skipped files as JSON lines ``{path, reason}`` to the already-open ``--errors`` file."""
    if f is None:
        return
    try:
        for item, reason in errors:
            f.write(json.dumps({"path": str(item), "reason": reason}) + "\n")
        f.flush()
    except OSError as e:
        kept = f"; the gallery {saved} was saved" if saved is not None else ""
        raise UsageError(f"cannot write --errors {name}: {e.strerror or e}{kept}", code=1) from None


# ---------------------------------------------------------------------------------------------- index
def run_index(args: argparse.Namespace) -> int:
    """``tki index``: returns the exit status."""
    return _guarded("tki index", _run_index, args, "interrupted; the gallery was not changed", INDEX_FLAGS)


def _run_index(args: argparse.Namespace) -> int:
    from tki_sdk.runtime.pipeline.embed_run import index_folder

    src, gpath = Path(args.from_parquet), Path(args.gallery)
    if not src.is_dir():
        raise UsageError(f"--from-parquet {src} is not a folder of shards")
    from tki_sdk.runtime.pipeline.job import check_writable

    check_writable(gpath, field="gallery")
    errors_f = _open_errors_file(args.errors) if args.errors else None
    try:
        t0 = time.perf_counter()
        try:
            rep, gallery = index_folder(src, gpath, exact=args.exact, dtype=args.dtype, progress=True,
                                        wait=not args.no_wait, **_graph_options(args))
        except ImportError as e:
            raise UsageError(str(e), code=3) from None
        except (OSError, ValueError) as e:
            raise UsageError(str(e), code=1) from None
        for path, reason in rep.failed:
            print(f"  failed: {printable(path)}: {printable(reason)}", file=sys.stderr)
        print(f"indexed {rep.rows} rows into {gpath} ({len(gallery)} items) in {time.perf_counter() - t0:.1f} s: "
              f"added {rep.added}, updated {rep.updated}, unchanged {rep.unchanged}, failed {len(rep.failed)}",
              file=sys.stderr)
        _write_errors(errors_f, args.errors, rep.failed, saved=gpath)
        return 0
    finally:
        if errors_f is not None:
            try:
                errors_f.close()
            except OSError:
                pass


# ---------------------------------------------------------------------------------------------- search
def run_search(args: argparse.Namespace) -> int:
    """``tki search``: returns the exit status."""
    return _guarded("tki search", _run_search, args, "interrupted")


def _run_search(args: argparse.Namespace) -> int:

    from tki_sdk.runtime.index.gallery import (
        MAX_K,
        MISSING_KEY,
        Gallery,
        GalleryDamagedError,
        ModelMismatchError,
        is_gallery,
    )
    from tki_sdk.runtime.index.metadata_store import MAX_WHERE_FIELDS

    _positive("-k", args.k)
    if args.k > MAX_K:
        raise UsageError(f"-k {args.k:,} is too large: k must be at most {MAX_K:,}")
    where = parse_where(args.where)
    if where and len(where) > MAX_WHERE_FIELDS:
        raise UsageError(f"--where names {len(where)} fields; a filter may name at most {MAX_WHERE_FIELDS} fields")
    gpath = Path(args.gallery)
    if not is_gallery(gpath):
        raise UsageError(f"{gpath} is not a gallery; build one with tki embed")
    texts = _text_queries(args)
    if texts is not None:
        queries: list[Any] = list(texts)
    elif args.images:
        qdir = Path(args.images)
        if not qdir.is_dir():
            raise UsageError(f"query folder {qdir} does not exist or is not a folder")
        skipped: list[SkippedEntry] = []
        queries = [f.path for f in list_images(qdir, skipped)]
        for entry in skipped:
            print(f"tki search: skipped {printable(entry.path)}: {printable(entry.reason)}", file=sys.stderr)
        if not queries:
            raise UsageError(f"no image files under {qdir}")
    else:
        queries = [Path(q) for q in args.image]
        missing = [printable(q) for q in queries if not q.is_file()]
        if missing:
            raise UsageError(f"query image not found: {', '.join(missing)}")
    try:
        gallery = Gallery.view(gpath)
    except GalleryDamagedError as e:
        raise UsageError(str(e), code=EXIT_DAMAGED) from None
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open gallery {gpath}: {one_line(e)}") from None

    try:
        gallery.check_model(ModelMetadata.load(_check_model_dir(args.model)).fingerprint())
    except ModelMismatchError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    emb = _make_embedder(args)
    if emb.embedding_dim != gallery.ndim:
        raise UsageError(f"model embeds {emb.embedding_dim}-d vectors but the gallery holds {gallery.ndim}-d ones")
    if texts is not None:
        res = _embed_text_queries(emb, texts, args.text_template)
    else:
        res = emb.embed_images(queries, progress=len(queries) > 64)
    for item, reason in res.errors:
        print(f"tki search: skipped query {printable(item)}: {printable(reason)}", file=sys.stderr)
    if not len(res.indices):
        raise UsageError("no query image could be read", code=1)
    try:
        keys, dists = gallery.search(res.embeddings, args.k, where=where, model_fingerprint=emb.model_fingerprint)
        flat = keys.reshape(-1)
        metas = gallery.get_metadata(flat[flat != MISSING_KEY])
    except GalleryDamagedError as e:
        raise UsageError(str(e), code=EXIT_DAMAGED) from None
    except ValueError as e:
        raise UsageError(str(e)) from None
    meta_of = dict(zip((int(k) for k in flat[flat != MISSING_KEY]), metas))
    for row, qi in enumerate(res.indices):
        hits = []
        for rank, (k, d) in enumerate(zip(keys[row], dists[row]), 1):
            if k == MISSING_KEY:
                break
            m = meta_of.get(int(k)) or {}
            hits.append({"rank": rank, "key": int(k), "distance": float(d), **{f: m.get(f) for f in ("path", "domain", "class")},
                         "metadata": m})
        query = str(queries[int(qi)])
        if args.json:  # json.dumps escapes control characters itself (\n, \u001b)
            print(json.dumps({"query": query, "hits": hits}))
        else:
            print(printable(query))
            if not hits:
                print("  (no gallery item matches)")
            for h in hits:
                label = "/".join(str(h[f]) for f in ("domain", "class") if h.get(f) is not None)
                where_txt = h.get("path") or f"key {h['key']}"
                print(f"  {h['rank']:>3}. {h['distance']:.4f}  {printable(where_txt)}"
                      + (f"  [{printable(label)}]" if label else ""))
    return 0


def _text_queries(args: argparse.Namespace) -> list[str] | None:
    """The ``--text`` queries, checked (None without ``--text``); the model must have a text encoder."""
    from tki_sdk.runtime.engine.text_encoder import MAX_TEXT_CHARS, resolve_template

    if not getattr(args, "text", None):
        if getattr(args, "text_template", None) is not None:
            raise UsageError("--text-template applies to --text queries only; add --text WORDS")
        return None
    texts = list(args.text)
    if any(not t.strip() for t in texts):
        raise UsageError("--text is empty; give the words to search for, e.g. --text \"a horse\"")
    long = [t for t in texts if len(t) > MAX_TEXT_CHARS]
    if long:
        raise UsageError(f"--text is {len(long[0]):,} characters; at most {MAX_TEXT_CHARS:,} are accepted")
    try:
        md = ModelMetadata.load(_check_model_dir(args.model))
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    if not md.has_text:
        raise UsageError(f"{args.model} has no text encoder (exported before text search or with --no-text); "
                         "re-export the model with tki-export (without --no-text) to search by --text")
    try:
        resolve_template(args.text_template, "raw")
    except ValueError as e:
        raise UsageError(f"--text-template: {e}") from None
    return texts


def _embed_text_queries(emb: Any, texts: list[str], template: str | None) -> Any:
    """``--text`` queries -> an ``EmbedResult`` (one row per query, no errors)."""

    from tki_sdk.runtime.engine.artifact_check import ArtifactCheckError
    from tki_sdk.runtime.engine.embedder import EmbedResult

    try:
        vectors = emb.embed_texts(texts, template=template)
    except ArtifactCheckError as e:
        raise UsageError(str(e), code=EXIT_DAMAGED) from None
    except ValueError as e:
        raise UsageError(one_line(e)) from None
    return EmbedResult(vectors, np.arange(len(texts), dtype=np.int64))


# ---------------------------------------------------------------------------------------------- info
def describe(path: str | os.PathLike, verify: bool = False) -> str | None:
    """Text description of an export folder / ``tki.json`` or of a gallery; ``None`` when it is neither.

    Files are checked against what ``tki.json`` / ``gallery.json`` record: sizes (and, for galleries up to
    64 MiB, SHA-256) by default, SHA-256 of everything with ``verify``. A damaged file raises
    :class:`~tki_sdk.runtime.index.store.GalleryDamagedError` or
    :class:`~tki_sdk.runtime.engine.artifact_check.ArtifactCheckError` (one line naming the file; ``tki info``
    exits 4).
    """
    from tki_sdk.runtime.engine.artifact_check import checked_artifact_path
    from tki_sdk.runtime.index.gallery import Gallery, is_gallery

    p = Path(path)
    if (p.is_dir() and (p / METADATA_FILE).is_file()) or (p.is_file() and p.name == METADATA_FILE):
        md = ModelMetadata.load(p)
        folder = p if p.is_dir() else p.parent
        pre = md.preprocess
        lines = [
            f"export: {folder}",
            f"  model:        {md.model_name} (head {md.head}, output {md.output_space}, metric {md.metric})",
            f"  embedding:    {md.embedding_dim}-d" + (f", curvature {md.curvature}" if md.curvature is not None else ""),
            f"  preprocess:   {pre.size[0]}x{pre.size[1]} {pre.resize_mode} {pre.interpolation}, "
            f"mean {list(pre.mean)}, std {list(pre.std)}",
            f"  fingerprint:  {md.fingerprint()[:16]}",
        ]
        if md.checkpoint:
            lines.append(f"  checkpoint:   {md.checkpoint.get('path')} ({str(md.checkpoint.get('sha256'))[:12]})")
        if md.opset is not None:
            lines.append(f"  opset:        {md.opset}")
        for key, art in sorted(md.artifacts.items()):
            f = folder / str(art.get("file", ""))
            if f.is_file() or not isinstance(art, dict):
                _, checked = checked_artifact_path(folder, key, art if isinstance(art, dict) else {},
                                                   "sha256" if verify else "size")
                size = f.stat().st_size
                status = f"{size / 1e6:.1f} MB, " + ("sha256 ok" if checked == "sha256" else
                                                      "size ok" if checked.startswith("size") else checked)
            else:
                status = "MISSING"
            default = "  (default)" if key == md.default_precision else ""
            lines.append(f"  artifact:     {key:<14} {printable(art.get('file'))}  {status}{default}")
        return "\n".join(lines)
    if is_gallery(p):
        return Gallery.view(p, verify="sha256" if verify else "auto").describe()
    return None


def describe_engine(model_dir: str | os.PathLike, threads: int | None = None) -> str:
    """Which artifact and engine ``Embedder(model_dir, threads=threads)`` runs on this machine, and why (the
    engine choice: measured now or read from its cache), with this CPU's facts and peak."""

    from tki_sdk.runtime.engine.embedder import Embedder, available_backends

    emb = Embedder(model_dir, threads=threads)
    cpu = cpu_info()
    peak = cpu.peak()
    engines = {k: (v or {}).get("version") for k, v in available_backends().items() if v}
    lines = [
        f"engine:       {emb.backend} ({emb.provider}), artifact {emb.precision} ({emb.model_path.name})",
        f"  cpu:        {cpu.summary()}",
        f"  peak:       fp32 {peak.fp32_isa}, int8 {peak.int8_isa}; {peak.method}",
        "  installed:  " + ", ".join(f"{k} {v}" for k, v in engines.items()),
    ]
    ch = emb.engine_choice
    if ch is None:
        lines.append("  why:        no measurement (a GPU provider is available)")
    else:
        lines.append(f"  why:        {ch.reason}" + (f" [{ch.source}" + (f", {ch.measured_at}]" if ch.measured_at else "]")))
        for label, ips in sorted(ch.images_per_s.items(), key=lambda kv: -kv[1]):
            lines.append(f"  measured:   {label:<28} {ips:8.1f} img/s")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- standalone
def main(argv: Sequence[str] | None = None) -> int:
    """Standalone entry: ``embed``, ``search`` and ``info PATH``."""
    parser = OneLineParser(
        prog="tki",
        description="tki runtime commands (torch-free): embed folders into galleries, search them.",
        epilog="example:\n  tki embed --model export/ --images photos/ --out photos.gallery\n"
        "  tki search --gallery photos.gallery --model export/ --image q.jpg -k 5",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    register(sub)
    info = sub.add_parser("info", help="describe an export folder or a gallery",
                          epilog=INFO_EXAMPLE + "\n  tki info --model export/   # engine chosen here, and why",
                          formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("path", nargs="?")
    info.add_argument("--verify", action="store_true", help=VERIFY_HELP)
    info.add_argument("--model", help="export folder: also say which artifact and engine run here, and why")
    info.add_argument("--threads", type=int, default=None, help="threads the engine choice assumes (default all)")
    info.set_defaults(func=_run_info)
    def body() -> int:
        args = parser.parse_args(argv)
        configure_logging()
        return int(args.func(args))

    return run_main("tki", body)


def describe_or_refuse(path: str | os.PathLike, verify: bool = False) -> str | None:
    """:func:`describe`, with a damaged gallery or model file as a :class:`UsageError` of exit status 4."""
    from tki_sdk.runtime.engine.artifact_check import ArtifactCheckError
    from tki_sdk.runtime.index.store import GalleryDamagedError

    try:
        return describe(path, verify=verify)
    except (GalleryDamagedError, ArtifactCheckError) as e:
        raise UsageError(str(e), code=EXIT_DAMAGED, prog="tki info") from None


def _run_info(args: argparse.Namespace) -> int:
    path = args.path or args.model
    if path is None:
        print_error("tki info", "give a path (export folder, gallery) or --model EXPORT")
        return 2
    try:
        text = describe_or_refuse(path, verify=args.verify)
    except UsageError as e:
        print_error("tki info", e)
        return e.code
    if text is None:
        print_error("tki info", f"{path} is neither an export folder (tki.json) nor a gallery")
        return 2
    print(text)
    if args.model:
        print(engine_info(args.model, args.threads))
    return 0


def engine_info(model: str | os.PathLike, threads: int | None) -> str:
    """:func:`describe_engine`, with a user error (one line) for a folder that is not an export."""

    if threads is not None and threads < 1:
        raise UsageError("--threads must be >= 1")
    try:
        return describe_engine(model, threads)
    except (FileNotFoundError, ValueError) as e:
        raise UsageError(f"--model {model}: {e}") from None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
