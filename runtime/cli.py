"""``tki embed`` and ``tki search`` (torch-free), plus ``describe(path)`` for ``tki info``.

The ``tki`` console script adds these with :func:`register`; :func:`main` runs them standalone
(``python -m tki_sdk.runtime.cli embed ...``).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

from tki_sdk.common.cli import EXIT_INTERRUPTED, OneLineParser, UsageError, print_error, run_main

__all__ = ["register", "describe", "main", "parse_where"]

EMBED_EXAMPLE = """example:
  tki embed --model export/ --images data/pacs/images --out pacs.gallery --batch-size 64 --threads 2 \\
      --errors skipped.jsonl

Builds a gallery from every image file under --images. Folders <domain>/<class>/<file> fill the
metadata fields "domain" and "class" (<class>/<file> fills "class"). Unreadable files are skipped and
listed at the end with their reason; the exit status is 0 when at least one image was indexed."""

SEARCH_EXAMPLE = """example:
  tki search --gallery pacs.gallery --model export/ --image query.jpg -k 5 --where domain=sketch
  tki search --gallery pacs.gallery --model export/ --images queries/ --where class=dog,horse --json

--where NAME=VALUE keeps gallery items whose metadata field NAME equals VALUE (VALUE may be a comma list:
any of them); several --where options must all hold. --json prints one JSON object per query."""


# ---------------------------------------------------------------------------------------------- parsers
def _add_embed(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "embed",
        help="embed a folder of images into a searchable gallery (torch-free)",
        description="Embed every image under a folder with an exported TKI model and save a usearch gallery.",
        epilog=EMBED_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="DIR", help="export folder written by tki-export (holds tki.json)")
    p.add_argument("--images", required=True, metavar="DIR", help="folder of images (searched recursively)")
    p.add_argument("--out", required=True, metavar="GALLERY", help="gallery folder to write")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per model call (default 32)")
    _add_model_options(p)
    p.add_argument("--workers", type=int, default=None, metavar="N", help="decode threads (default min(8, cores))")
    p.add_argument("--errors", metavar="FILE", help="also write skipped files as JSON lines {path, reason}")
    p.add_argument("--exact", action="store_true", help="flat index searched by brute force (no HNSW graph)")
    p.add_argument("--dtype", default="f32", choices=["f32", "f16", "i8"], help="vector storage (default f32)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing gallery at --out")
    p.add_argument("--target-recall", type=float, default=0.99, metavar="R",
                   help="tune HNSW ef_search for this recall@10 on leave-one-out queries (default 0.99; 0: keep 64)")
    p.set_defaults(func=run_embed)
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
    p.add_argument("-k", type=int, default=10, metavar="N", help="hits per query (default 10)")
    p.add_argument("--where", action="append", default=[], metavar="NAME=VALUE",
                   help="metadata filter, e.g. domain=sketch or class=dog,horse (repeatable: all must hold)")
    p.add_argument("--json", action="store_true", help="print one JSON object per query instead of text")
    _add_model_options(p)
    p.set_defaults(func=run_search)
    return p


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"],
                   help="inference backend (default auto: TensorRT for a plan, onnxruntime otherwise)")
    p.add_argument("--precision", default=None, metavar="P",
                   help="model artifact from tki.json: fp32, fp16, int8, tensorrt_fp16 (default: the export's)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="inference threads on CPU")
    p.add_argument("--draft", action="store_true", help="fast reduced-scale JPEG decoding (slightly different pixels)")
    p.add_argument("--exif-transpose", action="store_true", help="apply EXIF orientation (open_clip does not)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images declaring more pixels than this (default: Pillow's 89,478,485)")


def register(subparsers: Any) -> None:
    """Add the ``embed`` and ``search`` subcommands to a ``tki`` argparse subparsers object.

    Each sets ``func``; the caller runs ``sys.exit(args.func(args))``. Handlers print one line on stderr and
    return a non-zero status for bad input (they raise nothing).
    """
    _add_embed(subparsers)
    _add_search(subparsers)


# ---------------------------------------------------------------------------------------------- helpers
def _check_model_dir(path: str) -> Path:
    from .metadata import METADATA_FILE

    p = Path(path)
    if not p.exists():
        raise UsageError(f"model folder {p} does not exist; pass the folder written by tki-export")
    if p.is_dir() and not (p / METADATA_FILE).is_file():
        raise UsageError(f"{p} has no {METADATA_FILE}; pass the folder written by tki-export")
    return p


def _positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be >= 1 (got {value})")


def _make_embedder(args: argparse.Namespace) -> Any:
    from .embedder import Embedder

    model = _check_model_dir(args.model)
    _positive("--threads", args.threads)
    pre: dict[str, Any] = {"draft": bool(args.draft), "exif_transpose": bool(args.exif_transpose)}
    if args.max_pixels is not None:
        _positive("--max-pixels", args.max_pixels)
        pre["max_pixels"] = int(args.max_pixels)
    try:
        emb = Embedder(model, backend=args.backend, precision=args.precision, threads=args.threads, preprocess=pre)
    except (ValueError, FileNotFoundError, ImportError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    print(
        f"model: {emb.metadata.model_name} ({emb.precision}, {emb.model_path.name}) on {emb.backend} / {emb.provider}",
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
def _guarded(prog: str, run: Any, args: argparse.Namespace, interrupted: str) -> int:
    """Run a command; a :class:`UsageError` or Ctrl-C becomes one line on stderr and its exit status."""
    try:
        return run(args)
    except UsageError as e:
        print_error(prog, e)
        return e.code
    except KeyboardInterrupt:
        print_error(prog, interrupted)
        return EXIT_INTERRUPTED


def run_embed(args: argparse.Namespace) -> int:
    """``tki embed``: returns the exit status."""
    return _guarded("tki embed", _run_embed, args, "interrupted; nothing was written")


def _check_out_writable(out: Path) -> None:
    """Refuse, before any work, an ``--out`` whose nearest existing folder cannot be written."""
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"--out {out}: {probe} is a file, not a folder; choose another --out")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"--out {out}: folder {probe} is not writable; choose another --out")


def _open_errors_file(path: str) -> Any:
    """Open ``--errors FILE`` for writing now, so a bad path fails before the embedding run."""
    try:
        return open(path, "w")
    except OSError as e:
        raise UsageError(f"cannot write --errors {path}: {e.strerror or e}") from None


def _run_embed(args: argparse.Namespace) -> int:
    from .gallery_store import is_empty_dir, is_gallery
    from .ingest import scan_image_folder

    _positive("--batch-size", args.batch_size)
    _positive("--workers", args.workers)
    images = Path(args.images)
    if not images.is_dir():
        raise UsageError(f"image folder {images} does not exist or is not a folder")
    out = Path(args.out)
    if out.exists():
        if not is_gallery(out) and not (out.is_dir() and is_empty_dir(out)):
            raise UsageError(f"--out {out} exists and is not a gallery; choose a new path")
        if is_gallery(out) and not args.overwrite:
            raise UsageError(f"gallery {out} already exists; pass --overwrite to replace it")
    _check_out_writable(out)
    files = scan_image_folder(images)
    if not files:
        raise UsageError(f"no image files under {images} (looked for .jpg, .png, .gif, .bmp, .tif, .webp, ...)")
    errors_f = _open_errors_file(args.errors) if args.errors else None
    try:
        return _embed_and_save(args, _make_embedder(args), files, images, out, errors_f)
    finally:
        if errors_f is not None:
            try:
                errors_f.close()
            except OSError:
                pass  # already reported by _write_errors


def _embed_and_save(args: argparse.Namespace, emb: Any, files: list, images: Path, out: Path, errors_f: Any) -> int:
    """Embed ``files``, save the gallery to ``out``, then write the skipped files to ``errors_f``."""
    from .gallery import Gallery
    from .ingest import embed_into, gallery_options

    t0 = time.perf_counter()
    try:
        gallery = Gallery(**gallery_options(emb, exact=args.exact, dtype=args.dtype))
    except ValueError as e:
        raise UsageError(str(e)) from None
    res = embed_into(gallery, files, emb, batch_size=args.batch_size, workers=args.workers, progress=True)
    wall = time.perf_counter() - t0
    if res.errors:
        print(f"skipped {len(res.errors)} of {len(files)} files:", file=sys.stderr)
        for item, reason in res.errors:
            print(f"  {item}: {reason}", file=sys.stderr)
    if not len(res.indices):
        _write_errors(errors_f, args.errors, res.errors)
        raise UsageError(f"none of the {len(files)} files under {images} could be read; nothing was written", code=1)
    if args.target_recall > 0 and not gallery.exact and len(gallery) > 1:
        gallery.tune(min(1.0, args.target_recall))  # stored in gallery.json; `tki info` shows the estimate
    try:
        gallery.save(out)
    except OSError as e:
        raise UsageError(f"cannot write gallery {out}: {e}", code=1) from None
    s = res.stats
    print(
        f"indexed {len(res.indices)} of {len(files)} images into {out} in {wall:.1f} s "
        f"({len(res.indices) / max(wall, 1e-9):.1f} img/s; model {s['infer_s']:.1f} s, "
        f"decode+preprocess {s['decode_s']:.1f} thread-s)",
        file=sys.stderr,
    )
    _write_errors(errors_f, args.errors, res.errors, saved=out)
    return 0


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


# ---------------------------------------------------------------------------------------------- search
def run_search(args: argparse.Namespace) -> int:
    """``tki search``: returns the exit status."""
    return _guarded("tki search", _run_search, args, "interrupted")


def _run_search(args: argparse.Namespace) -> int:
    from .gallery import MISSING_KEY, Gallery, ModelMismatchError, is_gallery
    from .ingest import scan_image_folder

    _positive("-k", args.k)
    where = parse_where(args.where)
    gpath = Path(args.gallery)
    if not is_gallery(gpath):
        raise UsageError(f"{gpath} is not a gallery; build one with tki embed")
    if args.images:
        qdir = Path(args.images)
        if not qdir.is_dir():
            raise UsageError(f"query folder {qdir} does not exist or is not a folder")
        queries: list[Path] = [p for p, _ in scan_image_folder(qdir)]
        if not queries:
            raise UsageError(f"no image files under {qdir}")
    else:
        queries = [Path(q) for q in args.image]
        missing = [str(q) for q in queries if not q.is_file()]
        if missing:
            raise UsageError(f"query image not found: {', '.join(missing)}")
    try:
        gallery = Gallery.view(gpath)
    except (OSError, ValueError) as e:
        raise UsageError(f"cannot open gallery {gpath}: {e}") from None
    from .metadata import ModelMetadata

    try:
        gallery.check_model(ModelMetadata.load(_check_model_dir(args.model)).fingerprint())
    except ModelMismatchError as e:
        raise UsageError(str(e)) from None
    except (OSError, ValueError) as e:
        raise UsageError(str(e)) from None
    emb = _make_embedder(args)
    if emb.embedding_dim != gallery.ndim:
        raise UsageError(f"model embeds {emb.embedding_dim}-d vectors but the gallery holds {gallery.ndim}-d ones")
    res = emb.embed_images(queries, progress=len(queries) > 64)
    for item, reason in res.errors:
        print(f"tki search: skipped query {item}: {reason}", file=sys.stderr)
    if not len(res.indices):
        raise UsageError("no query image could be read", code=1)
    try:
        keys, dists = gallery.search(res.embeddings, args.k, where=where, model_fingerprint=emb.model_fingerprint)
    except ValueError as e:
        raise UsageError(str(e)) from None
    flat = keys.reshape(-1)
    metas = gallery.get_metadata(flat[flat != MISSING_KEY])
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
        if args.json:
            print(json.dumps({"query": query, "hits": hits}))
        else:
            print(f"{query}")
            if not hits:
                print("  (no gallery item matches)")
            for h in hits:
                label = "/".join(str(h[f]) for f in ("domain", "class") if h.get(f) is not None)
                where_txt = h.get("path") or f"key {h['key']}"
                print(f"  {h['rank']:>3}. {h['distance']:.4f}  {where_txt}" + (f"  [{label}]" if label else ""))
    return 0


# ---------------------------------------------------------------------------------------------- info
def describe(path: str | os.PathLike) -> str | None:
    """Text description of an export folder / ``tki.json`` or of a gallery; ``None`` when it is neither."""
    from .gallery import Gallery, is_gallery
    from .metadata import METADATA_FILE, ModelMetadata

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
            size = f.stat().st_size if f.is_file() else None
            status = f"{size / 1e6:.1f} MB" if size is not None else "MISSING"
            default = "  (default)" if key == md.default_precision else ""
            lines.append(f"  artifact:     {key:<14} {art.get('file')}  {status}{default}")
        return "\n".join(lines)
    if is_gallery(p):
        try:
            return Gallery.view(p).describe()
        except (OSError, ValueError) as e:
            return f"gallery: {p}\n  damaged: {e}"
    return None


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
                          epilog="example:\n  tki info export/", formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("path")
    info.set_defaults(func=_run_info)
    def body() -> int:
        args = parser.parse_args(argv)
        if os.environ.get("TKI_LOG"):
            logging.basicConfig(level=os.environ["TKI_LOG"].upper())
        return int(args.func(args))

    return run_main("tki", body)


def _run_info(args: argparse.Namespace) -> int:
    text = describe(args.path)
    if text is None:
        print_error("tki info", f"{args.path} is neither an export folder (tki.json) nor a gallery")
        return 2
    print(text)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
