"""``tki-bench gpu``'s options: what :func:`tki_sdk.benchmarks.gpu_throughput.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.benchmarks.gpu_throughput import DEFAULT_BATCHES, PRESETS

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench gpu`` (the defaults :func:`tki_sdk.benchmarks.gpu_throughput.run` reads)."""
    g = parser.add_argument_group("gpu")
    g.add_argument("--preset", choices=sorted(PRESETS), default="full",
                   help="full: every backend (needs --model-dir for the exported ones) and end to end; budget: "
                        "torch fp32 / fp16 / fp16 + CUDA graph from --checkpoint alone, no export (default full)")
    g.add_argument("--device", choices=["cuda", "cpu"], default="cuda",
                   help="cuda (default); cpu rehearses the same steps without a GPU (numbers mean nothing)")
    g.add_argument("--dry-run", action="store_true",
                   help="--device cpu with the shortest timings: the whole preset end to end, to check it before "
                        "a GPU run")
    g.add_argument("--model-dir", type=Path, default=None,
                   help="tki-export folder (model.onnx, model.fp16.onnx, optional model.plan); not needed when "
                        "only torch backends run (--preset budget)")
    g.add_argument("--checkpoint", type=Path, default=None,
                   help="tki train folder for the torch paths (default: the one tki.json records)")
    g.add_argument("--pretrained", default=None, help="CLIP weights (default: what tki.json records)")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="PACS-style image folder (default $TKI_PACS_DIR, else ../shared/data/pacs/images beside the repository)")
    g.add_argument("--batch-sizes", default=",".join(map(str, DEFAULT_BATCHES)), help="default 1,32,256")
    g.add_argument("--backends", default=None,
                   help="comma-separated subset of the backends (default: the preset's)")
    g.add_argument("--seconds", type=float, default=None,
                   help="time per (backend, batch) (default: full 2, budget 1; --quick 0.4; --dry-run 0.1)")
    g.add_argument("--warmup", type=int, default=None, help="warm-up calls (default: full 10, budget 5; --quick 3)")
    g.add_argument("--parity-images", type=int, default=None,
                   help="PACS images for parity, a multiple of 32 (default 64; --quick / --dry-run 32)")
    g.add_argument("--e2e-images", type=int, default=None, help="JPEG files end to end (default 4096; --quick 512)")
    g.add_argument("--e2e-batch-size", type=int, default=256, help="Embedder batch size end to end (default 256)")
    g.add_argument("--e2e-workers", type=int, default=None, help="decode threads (default: all usable CPUs)")
    g.add_argument("--no-e2e", action="store_true", help="skip the end-to-end JPEG measurement")
    g.add_argument("--compile-mode", default="reduce-overhead",
                   choices=["reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs", "default", "none"],
                   help="torch.compile mode of torch-fp16-compile (default reduce-overhead)")
    g.add_argument("--device-id", type=int, default=0, help="CUDA device (default 0)")
