"""``tki-bench``: accuracy | parity | throughput | search | train | embed | paper | gpu | all.

Suite registry
--------------
Each suite is a module of :mod:`tki_sdk.benchmarks` exposing
``run(args: SuiteOptions) -> dict`` -- does the measurement and returns a JSON-serialisable payload.
``args`` (:class:`tki_sdk.benchmarks.options.SuiteOptions`) always carries ``quick`` (bool), ``out_dir``
(Path), ``suite_dir`` (``out_dir/<suite>``, where the suite writes its PNGs), ``no_progress`` (bool) and
``name`` (``None`` unless the user gave ``--name``; the suite's options may define that option itself).

Its flags are declared here, in :mod:`tki_sdk.cli.bench_options` ``.<suite>.add_arguments(parser)``
(optional; no required options: ``all`` runs every suite with defaults, so the suite checks what is
missing inside ``run`` and raises :class:`UsageError` with one line).

Keys of the payload the CLI understands (all optional; everything is stored in JSON):
``"name"`` (result file stem; default ``quick`` with --quick else ``results``),
``"markdown"`` (table printed at the end), ``"plots"`` (paths of PNGs written).
The CLI writes ``<out_dir>/<suite>/<name>.json`` with the machine, package versions and
git commit (:func:`tki_sdk.benchmarks.results.write_result`).

A suite whose module is not installed yet prints one line saying so; a user error
(:class:`UsageError` or a bad option) prints one line and exits with status 2.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from tki_sdk.common.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_MISSING, EXIT_USAGE, UsageError, one_line
from tki_sdk.cli.base import OneLineParser, configure_logging

__all__ = ["SUITES", "main", "build_parser", "load_suite", "load_options"]



class SuiteMissing(Exception):
    """The suite's module is not part of this install yet."""


# name -> (module, one-line description)
SUITES: dict[str, tuple[str, str]] = {
    "accuracy": ("tki_sdk.benchmarks.accuracy",
                 "cross-domain retrieval mAP / mAP@200 / Prec@200 (paper's tables), methods side by side"),
    "parity": ("tki_sdk.benchmarks.parity", "cosine and max error of every exported artifact vs torch"),
    "throughput": ("tki_sdk.benchmarks.throughput", "img/s and latency percentiles per backend and batch size"),
    "search": ("tki_sdk.benchmarks.search", "usearch HNSW recall@10, QPS, build rate and memory vs exact search"),
    "train": ("tki_sdk.benchmarks.train", "stage-1 and stage-2 training step times"),
    "embed": ("tki_sdk.benchmarks.embed", "end to end from image files vs decode and inference alone (runtime)"),
    "serve": ("tki_sdk.benchmarks.serve", "tki serve on loopback: QPS and latency per concurrency, batching vs batch-1, soak"),
    "paper": ("tki_sdk.benchmarks.paper",
              "the paper's tables 2-7 and figures 3, 5 (PACS, Office-Home, DomainNet): ablation runs, our numbers "
              "beside the paper's, its 'mAP' read as the convention its own numbers support"),
    "gpu": ("tki_sdk.benchmarks.gpu_throughput",
            "GPU parity, img/s and latency per backend (torch, ORT CUDA, TensorRT); end to end from JPEG"),
}

EPILOG = """\
examples:
  tki-bench search --quick                       # 1e4 and 5e4 synthetic vectors, a minute or two
  tki-bench search --sizes 1e5 --dim 512         # one 100k x 512 measurement
  tki-bench search --vectors emb.npy             # real embeddings, last 1000 rows as queries
  tki-bench accuracy --model-dir out/ --dataset-dir data/pacs --per-class 50
  tki-bench throughput --quick
  tki-bench paper --pretrained ViT-B-32-openai.pt --model ViT-B-32-quickgelu --dataset-dir data/pacs
  tki-bench paper --dataset domainnet --dataset-dir data/domainnet --split test --pretrained ViT-B-32-openai.pt \
      --model ViT-B-32-quickgelu --tables 2,7
  tki-bench paper --quick                        # tiny random model end to end (numbers mean nothing)
  tki-bench all --quick                          # every installed suite, CI-sized
results go to <out-dir>/<suite>/<name>.json (+ .png); a Markdown table is printed at the end.
"""


def load_options(name: str) -> ModuleType | None:
    """The module declaring suite ``name``'s flags (:mod:`tki_sdk.cli.bench_options`), None when it has none."""
    try:
        return importlib.import_module(f"{__package__}.bench_options.{name}")
    except ModuleNotFoundError as e:
        if e.name == f"{__package__}.bench_options.{name}":
            return None
        raise


def load_suite(name: str) -> ModuleType:
    """Import a suite's module; :class:`SuiteMissing` when it is not installed."""
    module_name, _ = SUITES[name]
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name == module_name:
            raise SuiteMissing(f"suite '{name}' is not available in this install: module {module_name} is missing") from None
        raise SuiteMissing(f"suite '{name}' cannot run: it needs the package '{e.name}' "
                           f"(pip install 'tki-sdk[bench]')") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="CI-sized run (small data, few repeats)")
    p.add_argument("--out-dir", type=Path, default=Path("benchmarks/results"),
                   help="results root; files go to <out-dir>/<suite>/ (default benchmarks/results)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or status lines")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(SUITES[name][0]) is not None
    except (ImportError, ValueError):
        return False


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    """The parser. Only the ``selected`` suite's module is imported (its options added), so
    ``tki-bench search`` never imports torch for another suite; ``selected=None`` imports all.
    Suites whose module is missing get a stub subcommand that says so.
    """
    parser = OneLineParser(
        prog="tki-bench",
        description="Benchmarks of tki-sdk: retrieval accuracy, export parity, throughput, vector search.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="suite", metavar="{" + ",".join([*SUITES, "all"]) + "}")
    for name, (module_name, desc) in SUITES.items():
        mod, missing = None, None
        if selected is None or selected == name:
            try:
                mod = load_suite(name)
            except SuiteMissing as e:
                missing = str(e)
        elif not _installed(name):
            missing = f"suite '{name}' is not available in this install: module {module_name} is missing"
        sp = sub.add_parser(name, help=desc + (" [not installed]" if missing else ""),
                            description=desc + (f"\n\n{missing}" if missing else ""),
                            epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
        _add_common(sp)
        opts = load_options(name) if mod is not None else None
        if opts is not None:
            opts.add_arguments(sp)
        if not any(a.dest == "name" for a in sp._actions):
            sp.add_argument("--name", default=None, help="result file stem (default: quick or results)")
        sp.set_defaults(_missing=missing)
    sp = sub.add_parser("all", help="run every installed suite (missing ones are listed)",
                        description="Run every installed suite with its defaults; options below are passed on.",
                        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_common(sp)
    sp.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated subset (default {','.join(SUITES)})")
    sp.add_argument("--model-dir", type=Path, action="append", default=None, help="export folder passed to suites that use one")
    sp.add_argument("--dataset-dir", type=Path, default=None, help="dataset folder passed to suites that use one")
    return parser


def _suite_parser(name: str) -> argparse.ArgumentParser:
    p = OneLineParser(prog=f"tki-bench {name}")
    _add_common(p)
    opts = load_options(name)
    if opts is not None:
        opts.add_arguments(p)
    if not any(a.dest == "name" for a in p._actions):
        p.add_argument("--name", default=None)
    return p


def _run_suite(name: str, mod: ModuleType, args: argparse.Namespace) -> tuple[Path, dict[str, Any]]:
    from tki_sdk.benchmarks.results import write_result

    args.out_dir = Path(args.out_dir)
    args.suite_dir = args.out_dir / name
    args.suite_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    payload = mod.run(args)
    if not isinstance(payload, dict):
        raise TypeError(f"suite {name}: run() returned {type(payload).__name__}, expected dict")
    payload.setdefault("seconds", time.perf_counter() - t0)
    stem = payload.get("name") or getattr(args, "name", None) or ("quick" if args.quick else "results")
    payload["name"] = stem
    path = write_result(args.out_dir, name, stem, payload)
    return path, payload


def _report(name: str, path: Path, payload: dict[str, Any]) -> None:
    md = payload.get("markdown")
    if md:
        print(f"\n## tki-bench {name}\n\n{md}\n")
    for p in payload.get("plots", []) or []:
        print(f"plot: {p}")
    print(f"results: {path}")


def _run_all(args: argparse.Namespace) -> int:
    wanted = [s.strip() for s in args.suites.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in SUITES]
    if unknown:
        raise UsageError(f"unknown suite(s) {unknown}; choose from {', '.join(SUITES)}")
    status: list[tuple[str, str]] = []
    code = 0
    for name in wanted:
        try:
            mod = load_suite(name)
        except SuiteMissing as e:
            print(f"tki-bench all: skipped: {e}", file=sys.stderr)
            status.append((name, "missing"))
            continue
        sargv = (["--quick"] if args.quick else []) + ["--out-dir", str(args.out_dir)]
        if args.no_progress:
            sargv.append("--no-progress")
        p = _suite_parser(name)
        dests = {a.dest for a in p._actions}
        if args.model_dir and "model_dir" in dests:
            for m in args.model_dir:
                sargv += ["--model-dir", str(m)]
        if args.dataset_dir and "dataset_dir" in dests:
            sargv += ["--dataset-dir", str(args.dataset_dir)]
        try:
            sargs = p.parse_args(sargv)
            path, payload = _run_suite(name, mod, sargs)
            _report(name, path, payload)
            status.append((name, "ok"))
        except UsageError as e:
            print(f"tki-bench all: skipped {name}: {e}", file=sys.stderr)
            status.append((name, f"skipped: {e}"))
        except Exception as e:  # noqa: BLE001 - one failing suite must not stop the others
            print(f"tki-bench all: {name} failed: {type(e).__name__}: {e}", file=sys.stderr)
            status.append((name, f"failed: {type(e).__name__}: {e}"))
            code = EXIT_FAILED
    print("\n" + "\n".join(f"{n}: {s}" for n, s in status))
    return code


def _load_torch_first() -> None:
    """Import torch (when installed) before any suite can import usearch.

    usearch's extension links libstdc++ statically; loaded before torch, it breaks torch's C++ exception
    handling (torch.jit and the TorchScript ONNX exporter spin forever; pytorch/pytorch#109923).
    """
    if importlib.util.find_spec("torch") is not None:
        importlib.import_module("torch")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``tki-bench``; returns the exit status (0 ok, 1 a suite failed, 2 bad input, 3 suite missing)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    _load_torch_first()
    try:
        selected = next((a for a in argv if not a.startswith("-")), None)
        parser = build_parser(selected if selected in SUITES else "")
        if not argv:
            parser.print_help()
            return EXIT_USAGE
        args = parser.parse_args(argv)
        configure_logging()
        if args.suite is None:
            raise UsageError("choose a suite (see tki-bench --help)")
        if args.suite == "all":
            return _run_all(args)
        if args._missing:
            print(f"tki-bench {args.suite}: {args._missing}", file=sys.stderr)
            return EXIT_MISSING
        mod = load_suite(args.suite)
        path, payload = _run_suite(args.suite, mod, args)
        _report(args.suite, path, payload)
        return 0
    except UsageError as e:
        msg = one_line(e)  # a suite may name itself ("tki-bench gpu: skipped: ...")
        print(msg if msg.startswith("tki-bench") else f"{e.prog or 'tki-bench'}: error: {msg}", file=sys.stderr)
        return e.code
    except (ValueError, OSError) as e:  # bad option values, unreadable or unwritable paths
        print(f"tki-bench: error: {one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("tki-bench: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
