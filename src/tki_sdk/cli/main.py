"""``tki``: train a TKI model, embed image folders, search galleries, describe artifacts.

Training imports torch lazily, so ``tki embed`` / ``tki search`` / ``tki info`` work in a runtime-only
install (no torch).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from tki_sdk.cli.base import OneLineParser, configure_logging, run_main
from tki_sdk.common.checkpoint_config import CONFIG_FILE, WEIGHTS_FILE, CheckpointConfig
from tki_sdk.common.contract import ContractError
from tki_sdk.common.errors import EXIT_USAGE, ConfigError, UsageError, one_line
from tki_sdk.train.config import (
    AGG_SPACES,
    GEOMETRIES,
    LABEL_STRATEGIES,
    STAGE1_LOSSES,
    TEMPERATURE_RULES,
    TrainConfig,
)

TRAIN_EXAMPLES = """\
examples:
  # PACS class names, random-init CLIP (numbers carry no meaning; shapes and code paths are real)
  tki train --model ViT-B-32 --classes dog,elephant,giraffe,guitar,horse,house,person --out ckpt/pacs

  # real OpenAI weights from a local file (OpenAI CLIP uses QuickGELU: use the -quickgelu name)
  tki train --model ViT-B-32-quickgelu --pretrained ViT-B-32-openai.pt \\
      --dataset-dir /data/pacs --out ckpt/pacs

  # ablations: L_max only (Table 5), random non-overlapping labels (Table 6), Euclidean head (Table 7)
  tki train --model ViT-B-32 --dataset-dir /data/pacs --losses max --out ckpt/lmax
  tki train --model ViT-B-32 --dataset-dir /data/pacs --labels random --label-seed 0 --out ckpt/random-labels
  tki train --model ViT-B-32 --dataset-dir /data/pacs --geometry euclidean --out ckpt/euclidean

  # DomainNet's 345 classes, 64 classes per step to bound memory, on a GPU
  tki train --model ViT-B-32 --pretrained openai --classes-file domainnet.txt \\
      --classes-per-step 64 --device cuda --out ckpt/domainnet
"""


def _read_classes(args: argparse.Namespace) -> list[str]:
    given = [a for a in (args.classes, args.classes_file, args.dataset_dir) if a]
    if len(given) != 1:
        raise UsageError("give exactly one of --classes, --classes-file, --dataset-dir")
    if args.classes:
        classes = [c.strip() for c in args.classes.split(",") if c.strip()]
    elif args.classes_file:
        p = Path(args.classes_file)
        if not p.is_file():
            raise UsageError(f"--classes-file {p} does not exist")
        classes = [ln.strip() for ln in p.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    else:
        from tki_sdk.common.imagefolders import discover_classes

        classes = discover_classes(args.dataset_dir)
    if not classes:
        raise UsageError("the class list is empty; give at least one class name")
    return classes


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="learn domain word vectors and the hyperbolic head from class names (text only)",
        description="Two-stage TKI training on a frozen CLIP: stage 1 learns P domain word vectors with "
        "L_exp = L_min + lambda*L_max; stage 2 trains the hyperbolic MLP with L_agg on the PxC prompt "
        "features. No images are used. Writes model.safetensors, config.json and train_curves.json.",
        epilog=TRAIN_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = TrainConfig  # every default and choice below comes from the config
    p.add_argument("--model", required=True, help="open_clip architecture, e.g. ViT-B-32, ViT-B-32-quickgelu, RN50")
    p.add_argument("--pretrained", default=d.pretrained,
                   help="open_clip pretrained tag (needs a reachable model hub) or a local weights file "
                        "(.pt/.pth/.bin state dict or .safetensors); omit for random init")
    src = p.add_argument_group("classes (exactly one)")
    src.add_argument("--classes", help="comma-separated class names")
    src.add_argument("--classes-file", help="text file, one class name per line")
    src.add_argument("--dataset-dir", help="folder laid out <domain>/<class>/ or <class>/: its class folder names")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument("--prompts", type=int, default=d.prompts, help="P, number of domain word vectors (default %(default)s)")
    p.add_argument("--steps-expand", type=int, default=d.steps_expand, help="stage-1 Adam steps (default %(default)s)")
    p.add_argument("--steps-aggregate", type=int, default=d.steps_aggregate,
                   help="stage-2 Adam steps (default %(default)s)")
    p.add_argument("--lr", type=float, default=d.lr_expand,
                   help="Adam learning rate, both stages (default %(default)s, the paper's)")
    p.add_argument("--tau", type=float, default=d.tau, help="temperature of L_min and L_agg (default %(default)s, the paper's)")
    p.add_argument("--lam", type=float, default=d.lam, help="lambda, weight of L_max in L_exp (default %(default)s, the paper's)")
    p.add_argument("--alpha", type=float, default=d.alpha, help="alpha of L_max (default %(default)s)")
    p.add_argument("--mu", type=float, default=d.mu, help="mu, similarity margin of L_max (default %(default)s)")
    p.add_argument("--classes-per-step", type=int, default=d.classes_per_step,
                   help="sample this many classes per step (bounds memory for e.g. DomainNet's 345)")
    p.add_argument("--head-depth", type=int, default=d.head_depth, help="Mobius layers in the head (default %(default)s)")
    p.add_argument("--head-hidden", type=int, default=d.head_hidden, help="hidden width (default: CLIP embedding width)")
    p.add_argument("--curvature", type=float, default=d.curvature,
                   help="c: the ball has curvature -c, radius 1/sqrt(c) (default %(default)s)")
    p.add_argument("--geometry", choices=GEOMETRIES, default=d.geometry,
                   help="euclidean = same-size plain MLP (the paper's Table 7 ablation; default %(default)s)")
    p.add_argument("--no-input-norm", action="store_false", dest="input_norm", default=d.input_norm,
                   help="feed the raw CLIP feature to expmap0 (default: L2-normalise it first, because image and "
                        "text features differ in norm and CLIP compares them by cosine)")
    p.add_argument("--agg-space", choices=AGG_SPACES, default=d.agg_space,
                   help="what L_agg's dot product sees: raw ball points (eq. 6 as written) or "
                        "logmap0 + L2 normalisation (default %(default)s)")
    abl = p.add_argument_group("ablations (the paper's Tables 5-7; each is recorded in config.json)")
    abl.add_argument("--losses", choices=STAGE1_LOSSES, default=d.losses,
                     help="what stage 1 optimises: L_min + lambda*L_max (both), L_min only, lambda*L_max "
                          "only, or nothing (stage 1 skipped, the domain vectors keep their initialisation); "
                          "default %(default)s")
    abl.add_argument("--labels", choices=LABEL_STRATEGIES, default=d.labels,
                     help="class labels in the prompts: the true class names, or seeded random words "
                          "from the package's word list that overlap none of them (Table 6, strategy 2); "
                          "default %(default)s")
    abl.add_argument("--label-seed", type=int, default=d.label_seed, help="seed of --labels random (default %(default)s)")
    abl.add_argument("--temperature-rule", choices=TEMPERATURE_RULES, default=d.temperature_rule,
                     help="matched: a euclidean head with --agg-space ball is compared by cosine at "
                          "tau*c, so its logits have the hyperbolic head's bound 1/(c*tau); as_written: raw dot "
                          "products at tau for both geometries (eq. 6 as the paper writes it; the euclidean "
                          "logits are then unbounded); default %(default)s")
    p.add_argument("--seed", type=int, default=d.seed,
                   help="seed for domain vectors, head init, class sampling (default %(default)s)")
    p.add_argument("--clip-init-seed", type=int, default=d.clip_init_seed,
                   help="seed of random-init CLIP (no --pretrained; default %(default)s)")
    p.add_argument("--device", default=d.device, help="cpu or cuda[:N] (default %(default)s)")
    p.add_argument("--full-context", action="store_true", default=d.full_context,
                   help="run the text encoder on all 77 positions (same result, slower; for checking)")
    p.add_argument("--no-progress", action="store_false", dest="progress", default=d.progress,
                   help="no progress bars")
    p.set_defaults(func=_cmd_train)


def _check_writable_dir(path: str, flag: str) -> None:
    """Create ``path`` if needed and prove it is writable, before any long work starts."""

    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {p} exists and is not a folder")
    try:
        p.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=p):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {p} is not writable ({e.strerror or e})") from None


#: ``TrainConfig`` field -> the ``tki train`` flag that sets it (the rest: ``--`` + field with dashes).
TRAIN_FLAGS = {"model_name": "--model", "lr_expand": "--lr", "lr_aggregate": "--lr", "input_norm": "--no-input-norm",
               "progress": "--no-progress", "classes": "--classes / --classes-file / --dataset-dir"}


def train_flag(field: str) -> str:
    """The ``tki train`` option that sets ``TrainConfig.<field>``."""
    return TRAIN_FLAGS.get(field, "--" + field.replace("_", "-"))


def _cmd_train(args: argparse.Namespace) -> int:
    classes = _read_classes(args)
    _check_writable_dir(args.out, "--out")
    from tki_sdk.train.trainer import train

    cfg = TrainConfig(
        model_name=args.model, classes=classes, out=args.out, pretrained=args.pretrained,
        prompts=args.prompts, steps_expand=args.steps_expand, steps_aggregate=args.steps_aggregate,
        lr_expand=args.lr, lr_aggregate=args.lr, tau=args.tau, lam=args.lam, alpha=args.alpha, mu=args.mu,
        classes_per_step=args.classes_per_step, head_depth=args.head_depth, head_hidden=args.head_hidden,
        curvature=args.curvature, geometry=args.geometry, agg_space=args.agg_space, seed=args.seed,
        losses=args.losses, labels=args.labels, label_seed=args.label_seed, temperature_rule=args.temperature_rule,
        input_norm=args.input_norm, clip_init_seed=args.clip_init_seed, device=args.device,
        full_context=args.full_context, progress=args.progress,
    )
    try:
        cfg.validate()
        out = train(cfg)
    except ConfigError as e:
        raise UsageError(e.render({e.field: train_flag(e.field)})) from None
    curves = json.loads((out / "train_curves.json").read_text())
    exp, agg = curves["expand"], curves["aggregate"]
    print(f"checkpoint written to {out}")
    if exp:
        print(f"  stage 1: L_exp {exp[0]['L_exp']:.4f} -> {exp[-1]['L_exp']:.4f} "
              f"({curves['expand_seconds_per_step']:.2f} s/step)")
    if agg:
        print(f"  stage 2: L_agg {agg[0]['L_agg']:.4f} -> {agg[-1]['L_agg']:.4f} "
              f"({curves['aggregate_seconds_per_step'] * 1000:.1f} ms/step)")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tki_sdk.cli.demo import run

    return run(args, tki_main=main)


def describe_checkpoint(path: Path) -> str | None:
    """Human-readable summary of a ``tki train`` folder, or None when ``path`` is not one."""

    if not (path.is_dir() and (path / CONFIG_FILE).is_file() and (path / WEIGHTS_FILE).is_file()):
        return None
    try:
        cfg = CheckpointConfig.load(path).to_dict()
    except ContractError as e:
        raise UsageError(str(e)) from None
    w = cfg.get("weights", {})
    weights = {"random": f"random init (seed {w.get('init_seed', 0)}): accuracy numbers carry no meaning",
               "file": f"file {w.get('ref')} (sha256 {str(w.get('sha256'))[:16]}...)",
               "tag": f"open_clip tag {w.get('ref')}"}.get(w.get("source"), str(w))
    head = cfg.get("head", {})
    classes = cfg.get("classes", [])
    lines = [
        f"TKI checkpoint {path}",
        f"  CLIP model     {cfg.get('model_name')}",
        f"  CLIP weights   {weights}",
        f"  classes ({len(classes)})   {', '.join(classes[:12])}{' ...' if len(classes) > 12 else ''}",
        f"  domain vectors P={cfg.get('prompts')}",
        f"  head           {head.get('geometry')} MLP, depth {head.get('depth')}, "
        f"in {head.get('in_dim')}, hidden {head.get('hidden_dim') or head.get('in_dim')}, "
        f"out {head.get('out_dim') or head.get('in_dim')}, curvature c={head.get('curvature')}, "
        f"activation {head.get('activation')}",
        f"  losses         {cfg.get('losses')}",
        f"  ablations      stage 1 optimised {cfg.get('stage1_losses', 'both')}; labels "
        f"{(cfg.get('labels') or {}).get('strategy', 'true')}; L_agg {cfg.get('aggregation') or 'eq. 6 as written'}",
        f"  optimiser      {cfg.get('optim')}",
        f"  versions       {cfg.get('versions')}",
    ]
    curves = path / cfg.get("curves", "train_curves.json")
    if curves.is_file():
        c = json.loads(curves.read_text())
        if c.get("expand"):
            lines.append(f"  stage 1        L_exp {c['expand'][0]['L_exp']:.4f} -> {c['expand'][-1]['L_exp']:.4f}")
        if c.get("aggregate"):
            lines.append(f"  stage 2        L_agg {c['aggregate'][0]['L_agg']:.4f} -> {c['aggregate'][-1]['L_agg']:.4f}")
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    if args.path is None and args.model is None:
        raise UsageError("tki info needs a path (checkpoint, export folder, gallery) or --model EXPORT")
    path = Path(args.path or args.model)
    if not path.exists():
        raise UsageError(f"{path} does not exist")
    text = describe_checkpoint(path)
    if text is None:
        try:
            from tki_sdk.cli.runtime import describe_or_refuse
        except ImportError:
            describe_or_refuse = None
        text = describe_or_refuse(path, verify=args.verify) if describe_or_refuse else None
    if text is None:
        raise UsageError(f"{path} is not a checkpoint (config.json + model.safetensors), an export folder "
                         "(tki.json) or a gallery")
    print(text)
    if args.model is not None:
        from tki_sdk.cli.runtime import engine_info

        print(engine_info(args.model, args.threads))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="tki",
        description="TKI cross-domain retrieval: train on class names, embed images, search galleries.",
        epilog="examples:\n  tki train --model ViT-B-32 --classes dog,horse,house --out ckpt\n"
        "  tki-export --checkpoint ckpt --out model\n"
        "  tki embed --model model --images photos/ --out gallery\n"
        "  tki search --gallery gallery --model model --image sketch.png -k 5\n"
        "  tki info ckpt",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_train(sub)
    try:
        from tki_sdk.cli.runtime import register
    except ImportError:
        register = None
    if register is not None:
        register(sub)
    try:
        from tki_sdk.cli.serve import (
            register as register_serve,  # argparse only; the web stack loads when it runs
        )
    except ImportError:
        register_serve = None
    if register_serve is not None:
        register_serve(sub)
    p = sub.add_parser(
        "demo",
        help="run the whole pipeline on PACS: train, export, embed a sample, search with sketches",
        description="Train on the PACS class names, export fp32 + int8 ONNX (checked against torch), embed a "
        "PACS photo sample with the torch-free runtime, search it with one sketch per class and print the hits.",
        epilog="examples:\n  tki demo                                  # random-init ViT-B-32, ~5 min on 2 cores\n"
        "  tki demo --model ViT-B-32-quickgelu --pretrained ViT-B-32-openai.pt --per-class 50",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from tki_sdk.cli.demo import add_arguments as _demo_args

    _demo_args(p)
    p.set_defaults(func=_cmd_demo)
    try:
        from tki_sdk.cli.runtime import INFO_EXAMPLE, VERIFY_HELP
    except ImportError:
        INFO_EXAMPLE, VERIFY_HELP = "example:\n  tki info ckpt/pacs", "check file hashes (export and gallery)"
    p = sub.add_parser("info", help="describe a checkpoint, an export folder or a gallery",
                       epilog=INFO_EXAMPLE.replace("tki info export/", "tki info ckpt/pacs\n  tki info export/")
                       + "\n  tki info --model models/pacs   # also: which artifact and engine run here, and why",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path", nargs="?", help="checkpoint folder, export folder or gallery")
    p.add_argument("--verify", action="store_true", help=VERIFY_HELP)
    p.add_argument("--model", help="export folder: also say which artifact and engine the Embedder runs on this "
                                   "machine and why (measures once, then cached)")
    p.add_argument("--threads", type=int, default=None, help="threads the engine choice assumes (default: all cores)")
    p.set_defaults(func=_cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``tki``; returns the exit status (see :mod:`tki_sdk.common.errors`)."""

    def body() -> int:
        parser = build_parser()
        args = parser.parse_args(argv)
        configure_logging()
        if not getattr(args, "func", None):
            parser.print_help()
            return EXIT_USAGE
        try:
            return int(args.func(args) or 0)
        except (ValueError, OSError) as e:
            raise UsageError(one_line(e), prog=f"tki {args.command}") from None

    return run_main("tki", body)


if __name__ == "__main__":
    sys.exit(main())
