"""``tki-export``: fused CLIP visual encoder + TKI head -> ONNX fp32 / fp16 / int8 (+ TensorRT), each checked
against PyTorch. Exit status: 0 success, 1 export or parity failure, 2 bad input (also an ``--out`` that is
not an export folder, without ``--overwrite``)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from tki_sdk.common.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UsageError, one_line
from tki_sdk.cli.base import OneLineParser, configure_logging

__all__ = ["main", "build_parser"]


EPILOG = """\
examples:
  # a trained checkpoint -> model.onnx, model.fp16.onnx, model.int8.onnx, tki.json, parity.json
  tki-export --checkpoint ckpt/pacs --out models/pacs
  # int8 calibrated on your own images (real photos through the model's exact preprocessing)
  tki-export --checkpoint ckpt/pacs --out models/pacs --precision fp32,int8 --calib-images data/pacs/images/photo
  # raw Poincaré-ball embeddings, searched by Poincaré distance (HNSW candidates re-ranked exactly)
  tki-export --checkpoint ckpt/pacs --out models/pacs-ball --embedding ball
  # vanilla CLIP (the paper's baseline), no checkpoint needed
  tki-export --head none --model ViT-B-32 --pretrained openai --out models/clip-b32
  # TensorRT fp16 engine (GPU + `pip install 'tki-sdk[gpu]'`) and a Triton model repository
  tki-export --checkpoint ckpt/pacs --out models/pacs --tensorrt --max-batch 256 --triton-repo triton/
  # into a folder that holds other files: only model*.onnx, model.plan, tki.json, parity.json are replaced
  tki-export --checkpoint ckpt/pacs --out shared/models --overwrite
  # also an OpenVINO int8 artifact (NNCF, `pip install 'tki-sdk[openvino]'`); the runtime measures which is fastest
  tki-export --checkpoint ckpt/pacs --out models/pacs --openvino

every artifact is compared with TKIModel.encode_image in float64 on real images and random tensors
(batch 1 and a larger batch); thresholds: fp32 cosine >= 0.99999, fp16 >= 0.999, int8 >= 0.99,
TensorRT fp16 >= 0.999, OpenVINO int8 >= 0.99. A miss fails the export (exit 1) unless --allow-parity-failure.
"""


def build_parser() -> argparse.ArgumentParser:
    from tki_sdk.export.calibration import DEFAULT_PACS_DIR
    from tki_sdk.export.onnx_export import MAX_OPSET, MIN_OPSET
    from tki_sdk.export.pipeline import ExportConfig as d  # every default below comes from the config

    p = OneLineParser(
        prog="tki-export",
        description="Export the fused CLIP visual encoder + TKI head to ONNX (fp32, fp16, int8) and optionally "
                    "TensorRT, prove parity with PyTorch for each artifact, and write tki.json for the runtime.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", type=Path, help="`tki train` output folder (needed for --head tki)")
    p.add_argument("--out", type=Path, required=True, help="output folder (created); an earlier export there is replaced only "
                        "when every new artifact passes parity; a folder that is not an export is refused")
    p.add_argument("--overwrite", action="store_true",
                   help="write into an --out that is not an export: replaces or removes only the files tki-export "
                        "writes (model.onnx, model.fp16.onnx, model.int8.onnx, model.plan, tki.json, parity.json)")
    p.add_argument("--precision", default=",".join(d.precisions),
                   help="comma-separated artifacts (default %(default)s; fp32 is always written)")
    p.add_argument("--head", choices=["tki", "none"], default=d.head,
                   help="tki: CLIP + hyperbolic head; none: vanilla CLIP, L2-normalised (default %(default)s)")
    p.add_argument("--model", dest="model_name", help="open_clip architecture for --head none without a checkpoint")
    p.add_argument("--embedding", choices=["cosine", "ball"], default=d.embedding,
                   help="what the embedding is (default %(default)s): cosine: h(.) divided by its L2 norm, compared by cosine; "
                        "ball: the raw Poincare-ball point h(.), compared by Poincare distance (or --metric ip). "
                        "Recorded in tki.json (output_space, metric); galleries follow it")
    p.add_argument("--metric", choices=["cos", "ip", "poincare"], default=None,
                   help="how embeddings are compared (default: cos for --embedding cosine, poincare for ball; "
                        "ip for ball from a euclidean head)")
    p.add_argument("--pretrained", help="CLIP weights: open_clip tag or local file (default: what the checkpoint "
                                         "recorded; random init for --model without it)")
    p.add_argument("--tensorrt", action="store_true", help="also build model.plan (TensorRT fp16) and validate it")
    p.add_argument("--openvino", action="store_true",
                   help="also validate model.onnx on OpenVINO and build model.ov.int8.onnx (NNCF int8 on the "
                        "calibration images), validated and timed on OpenVINO")
    p.add_argument("--calib-images", type=Path,
                   help="folder of images for int8 calibration and validation (default: $TKI_PACS_DIR, else PACS at "
                        f"{DEFAULT_PACS_DIR} when present, else generated images; the summary names the source)")
    p.add_argument("--calib-count", type=int, default=d.calib_count, help="images used to calibrate int8 (default %(default)s)")
    p.add_argument("--val-count", type=int, default=d.val_count, help="real images used for validation (default %(default)s)")
    p.add_argument("--int8-scheme", choices=["auto", "dynamic", "static_qdq"], default="auto",
                   help="auto: build dynamic and static QDQ, ship the faster batch-invariant one that meets parity "
                        "(static QDQ; dynamic, whose vectors depend on the batch, only when no static passes) (default)")
    p.add_argument("--opset", type=int, default=d.opset,
                   help=f"ONNX opset, {MIN_OPSET}..{MAX_OPSET} (default %(default)s)")
    p.add_argument("--max-batch", type=int, default=d.max_batch,
                   help="largest batch of the TensorRT profile and Triton max_batch_size (default %(default)s)")
    p.add_argument("--triton-repo", type=Path, help="also write a Triton model repository into this folder")
    p.add_argument("--threads", type=int, default=d.threads,
                   help="onnxruntime / torch threads for validation and timing (default %(default)s)")
    p.add_argument("--allow-parity-failure", action="store_true",
                   help="keep artifacts that miss their parity threshold (with a warning) instead of failing")
    p.add_argument("--no-text", action="store_true",
                   help="skip the text encoder (text.onnx + vocabulary; without it the export cannot search by text)")
    p.add_argument("--no-timing", action="store_true", help="skip the torch eager timing row of the summary")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def _check_writable(folder: Path, what: str) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".tki-write-test-"):
            pass
    except OSError as e:
        raise UsageError(f"cannot write to {what} {folder} ({e.strerror or e}); choose a writable folder") from None


def _check_decodable(files: list[Path], folder: Path) -> Path:
    """The first of ``files`` that decodes (so a folder of unreadable images fails before the model loads);
    raises :class:`NoImagesError` naming the first failure when none does."""
    from tki_sdk.runtime.engine.images import ImageLoadError, load_image

    from tki_sdk.export.calibration import NoImagesError

    first = None
    for f in files:
        try:
            load_image(f).close()
            return f
        except ImageLoadError as e:
            first = first or f"{f.name}: {e.reason}"
    raise NoImagesError(f"none of the {len(files)} images under {folder} can be decoded (first: {first}); "
                        "point --calib-images at a folder of readable images")


def _config(args: argparse.Namespace):  # -> ExportConfig
    from tki_sdk.export.calibration import NoImagesError, find_images
    from tki_sdk.export.onnx_export import MAX_OPSET, MIN_OPSET
    from tki_sdk.export.pipeline import PRECISIONS, ExportConfig
    from tki_sdk.export.tensorrt import TENSORRT_MISSING, tensorrt_available

    precisions = tuple(dict.fromkeys(s.strip() for s in args.precision.split(",") if s.strip()))
    bad = [s for s in precisions if s not in PRECISIONS]
    if bad or not precisions:
        raise UsageError(f"unknown precision {', '.join(bad) or repr(args.precision)}; choose from {', '.join(PRECISIONS)} "
                         "(comma-separated), e.g. --precision fp32,int8")
    if args.head == "tki" and args.checkpoint is None:
        raise UsageError("--head tki needs --checkpoint CKPT (a `tki train` folder); "
                         "for vanilla CLIP use --head none --model NAME")
    if args.head == "none" and args.checkpoint is None and not args.model_name:
        raise UsageError("--head none without --checkpoint needs --model NAME (an open_clip architecture, e.g. ViT-B-32)")
    if args.embedding == "ball" and args.head == "none":
        raise UsageError("--embedding ball needs a TKI head (vanilla CLIP has no ball); use --embedding cosine")
    if args.metric is not None and (args.embedding == "cosine") != (args.metric == "cos"):
        raise UsageError(f"--metric {args.metric} does not go with --embedding {args.embedding}: cosine uses cos; "
                         "ball uses poincare or ip")
    if args.checkpoint is not None:
        ck = args.checkpoint
        if not ck.exists():
            raise UsageError(f"checkpoint {ck} does not exist; pass the --out folder of `tki train`")
        if not ck.is_dir() or not (ck / "config.json").is_file() or not (ck / "model.safetensors").is_file():
            raise UsageError(f"{ck} is not a tki checkpoint (needs config.json and model.safetensors); "
                             "pass the --out folder of `tki train`")
    if not MIN_OPSET <= args.opset <= MAX_OPSET:
        raise UsageError(f"--opset {args.opset} is not supported; use {MIN_OPSET}..{MAX_OPSET}")
    if args.max_batch < 1:
        raise UsageError("--max-batch must be at least 1")
    if args.calib_count < 1 or args.val_count < 1:
        raise UsageError("--calib-count and --val-count must be at least 1")
    if args.threads < 1:
        raise UsageError("--threads must be at least 1")
    if args.calib_images is not None:
        try:
            _check_decodable(find_images(args.calib_images), args.calib_images)
        except (FileNotFoundError, NoImagesError) as e:
            raise UsageError(f"--calib-images: {e}") from None
    if args.tensorrt and tensorrt_available() is None:
        raise UsageError(TENSORRT_MISSING)
    from tki_sdk.export.pipeline import OutFolderError, check_out_folder

    try:
        check_out_folder(args.out, args.overwrite)
    except OutFolderError as e:
        raise UsageError(str(e)) from None
    if args.openvino:
        from tki_sdk.export.openvino_int8 import OPENVINO_EXPORT_MISSING, openvino_export_available

        if not openvino_export_available():
            raise UsageError(OPENVINO_EXPORT_MISSING)
    _check_writable(args.out, "output folder")
    if args.triton_repo is not None:
        _check_writable(args.triton_repo, "Triton repository")
    schemes = ("dynamic", "static_qdq") if args.int8_scheme == "auto" else (args.int8_scheme,)
    return ExportConfig(
        out=args.out, checkpoint=args.checkpoint, precisions=precisions, head=args.head, model_name=args.model_name,
        pretrained=args.pretrained, tensorrt=args.tensorrt, openvino=args.openvino, calib_images=args.calib_images,
        calib_count=args.calib_count, val_count=args.val_count, opset=args.opset, max_batch=args.max_batch,
        triton_repo=args.triton_repo, allow_parity_failure=args.allow_parity_failure, int8_schemes=schemes,
        threads=args.threads, time_torch=not args.no_timing, progress=not args.no_progress, overwrite=args.overwrite,
        embedding=args.embedding, metric=args.metric, text=not args.no_text,
    )


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)  # pragma: no cover


def summary_table(rows: list[dict], batch: int, threads: int) -> str:
    """The final table: artifact, file, size, parity min cosine (threshold), ms/image."""
    head = ["artifact", "file", "size", "min cosine", "threshold", "parity", f"ms/image (b{batch}, {threads}t)"]
    body = []
    for r in rows:
        body.append([
            r["artifact"], r["file"], _size(r.get("bytes")),
            "-" if r.get("min_cosine") is None else f"{r['min_cosine']:.6f}",
            "-" if r.get("threshold") is None else f"{r['threshold']}",
            "-" if r.get("pass") is None else ("pass" if r["pass"] else "FAIL"),
            "-" if r.get("ms_per_image") is None else f"{r['ms_per_image']:.2f}",
        ])
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    line = lambda cells: "  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    return "\n".join([line(head), line(["-" * w for w in widths]), *(line(b) for b in body)])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tki-export``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        parser = build_parser()
        if not argv:
            parser.print_help()
            return EXIT_USAGE
        args = parser.parse_args(argv)
        configure_logging()
        cfg = _config(args)
    except UsageError as e:
        print(f"tki-export: error: {one_line(e)}", file=sys.stderr)
        return e.code

    from tki_sdk.train.checkpoint import CheckpointError
    from tki_sdk.train.clip import ClipLoadError

    from tki_sdk.export.onnx_export import ExportError
    from tki_sdk.export.pipeline import run_export
    from tki_sdk.export.tensorrt import TensorRTBuildError
    from tki_sdk.export.validate import ParityError

    try:
        result = run_export(cfg)
    except (CheckpointError, ClipLoadError) as e:
        print(f"tki-export: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ParityError as e:
        for r in e.results:
            print(f"tki-export: FAILED {r.failure_line()}", file=sys.stderr)
        print(f"tki-export: no artifact or tki.json written (an earlier export in {cfg.out} is left as it was); "
              f"details in {cfg.out / 'parity.json'}; "
              "--allow-parity-failure keeps failing artifacts", file=sys.stderr)
        return EXIT_FAILED
    except (ExportError, TensorRTBuildError) as e:
        print(f"tki-export: error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except (ValueError, OSError, RuntimeError) as e:  # unreadable images, a full or read-only disk, ...
        print(f"tki-export: error: {one_line(e, with_type=True)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tki-export: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    for w in result.warnings:
        print(f"tki-export: warning: {w}", file=sys.stderr)
    print()
    print(summary_table(result.rows, cfg.bench_batch, cfg.threads))
    if result.images:
        print(f"\nimages (calibration / validation): {result.images['description']}")
    int8 = (result.metadata.artifacts if result.metadata else {}).get("int8")
    if int8 and int8.get("candidates"):
        parts = []
        for k, c in int8["candidates"].items():
            ms = "-" if c.get("ms_per_image") is None else f"{c['ms_per_image']:.2f} ms/image"
            parts.append(f"{k}: min cosine {c['min_cosine']:.6f}, {ms}")
        print(f"\nint8 candidates: {'; '.join(parts)} -> shipped {int8['scheme']} ({int8.get('chosen_because', '')})")
    print(f"\nwrote {cfg.out}/ (tki.json, parity.json) in {result.seconds:.0f} s"
          + (f"; Triton repository in {cfg.triton_repo}/" if cfg.triton_repo else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
