"""``tki-bench paper``'s options: what :func:`tki_sdk.benchmarks.paper.run` reads from its ``args``."""
from __future__ import annotations

import argparse
from pathlib import Path

from tki_sdk.benchmarks.datasets import DOMAINNET_SPLITS
from tki_sdk.benchmarks.datasets import PAPER_DATASETS
from tki_sdk.benchmarks.metrics import MAP_CONVENTIONS
from tki_sdk.benchmarks.paper import FIGURES, QUICK, TABLES

__all__ = ["add_arguments"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tki-bench paper`` (the defaults :func:`tki_sdk.benchmarks.paper.run` reads)."""
    g = parser.add_argument_group("paper")
    g.add_argument("--pretrained", default=None, metavar="FILE",
                   help="CLIP weights (local file or open_clip tag); without it CLIP is random and the numbers mean nothing")
    g.add_argument("--model", default=None,
                   help=f"open_clip architecture (default ViT-B-32; --quick {QUICK['model']}); Table 4: RN50 or ViT-L-14; "
                        "OpenAI weights need the -quickgelu names")
    g.add_argument("--dataset", default="pacs", choices=list(PAPER_DATASETS),
                   help="which paper dataset --dataset-dir holds, in its published layout (default pacs)")
    g.add_argument("--dataset-dir", type=Path, default=None,
                   help="the dataset's folder; for pacs default $TKI_PACS_DIR, else ../shared/data/pacs/images")
    g.add_argument("--split", default="test", choices=list(DOMAINNET_SPLITS),
                   help="DomainNet: the official split list to read (default test; 'all' reads every image)")
    g.add_argument("--map-convention", default=None, choices=list(MAP_CONVENTIONS),
                   help="which mAP the paper's 'mAP' column is compared with (default: the one its own numbers "
                        "support, whole-gallery mAP); every convention is computed and kept in the JSON anyway")
    g.add_argument("--tables", default=",".join(TABLES), help="paper tables to run (default 2,3,4,5,6,7)")
    g.add_argument("--figures", default=",".join(FIGURES), help="paper figures to draw (default 3,5; 'none' to skip)")
    g.add_argument("--per-class", type=int, default=None,
                   help=f"images per (domain, class), seeded sample (default all; --quick {QUICK['per_class']})")
    g.add_argument("--prompts", type=int, default=None, help="P of every run but the sweep (default 20, the paper's)")
    g.add_argument("--sweep", default=None, help="P values of Figure 5 (default 2,5,10,20,30; --quick 2,4)")
    g.add_argument("--steps-expand", type=int, default=None, help="stage-1 steps per run (default 200)")
    g.add_argument("--steps-aggregate", type=int, default=None, help="stage-2 steps per run (default 500)")
    g.add_argument("--k", type=int, default=200, help="k of mAP@k and Prec@k (default 200, the paper's)")
    g.add_argument("--seed", type=int, default=0, help="training and sampling seed (default 0)")
    g.add_argument("--batch-size", type=int, default=32, help="images per CLIP forward (default 32)")
    g.add_argument("--device", default="cpu", help="torch device (default cpu)")
    g.add_argument("--work-dir", type=Path, default=None, help="where the checkpoints go (default: a temporary folder)")
