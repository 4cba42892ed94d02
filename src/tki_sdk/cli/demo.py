"""``tki demo``: the whole pipeline on PACS in one command (the README's first command runs it).

1. ``tki train`` on the PACS class names (random-init ViT-B-32 unless ``--pretrained`` is given);
2. ``tki-export`` fp32 + int8, int8 calibrated on PACS images, each artifact checked against torch;
3. ``tki embed`` a PACS sample of photos into a gallery with the int8 model (torch-free runtime);
4. search the gallery with one sketch per class and print the top photos with their classes.

Each step is the same command a user would type; the equivalent command lines are printed. With random
weights the retrieved classes are no better than chance: the demo shows the machinery, not accuracy.
"""
from __future__ import annotations

import argparse
import json
import random
import shlex
import time
from collections.abc import Callable
from pathlib import Path

from tki_sdk.common.errors import UsageError
from tki_sdk.common.imagefolders import PACS_CLASSES, default_dataset_dir, list_images


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None,
                   help="PACS images folder <domain>/<class>/<file> (default $TKI_PACS_DIR, else "
                        "../shared/data/pacs/images beside the repository)")
    p.add_argument("--out", default="tki-demo", help="working folder for checkpoint, export and gallery")
    p.add_argument("--model", default="ViT-B-32", help="open_clip architecture (default ViT-B-32)")
    p.add_argument("--pretrained", default=None, help="open_clip tag or local weights file (default: random init)")
    p.add_argument("--steps-expand", type=int, default=30, help="stage-1 steps (default 30, a short demo run)")
    p.add_argument("--steps-aggregate", type=int, default=200, help="stage-2 steps (default 200)")
    p.add_argument("--per-class", type=int, default=10, help="gallery photos per class (default 10)")
    p.add_argument("--gallery-domain", default="photo", help="domain indexed in the gallery (default photo)")
    p.add_argument("--query-domain", default="sketch", help="domain of the query images (default sketch)")
    p.add_argument("-k", type=int, default=5, help="hits shown per query (default 5)")
    p.add_argument("--seed", type=int, default=0)


def _step(title: str, argv: list[str]) -> None:
    print(f"\n== {title}\n$ {' '.join(shlex.quote(a) for a in argv)}", flush=True)


def _files(folder: Path) -> list[Path]:

    return [f.path for f in list_images(folder)]


def _link_sample(data: Path, domain: str, per_class: int, dest: Path, rng: random.Random) -> int:
    """Symlink ``per_class`` images of each class of ``domain`` under ``dest/<domain>/<class>/`` (PACS
    itself is never written)."""
    n = 0
    for cls_dir in sorted(d for d in (data / domain).iterdir() if d.is_dir()):
        files = _files(cls_dir)
        for f in rng.sample(files, min(per_class, len(files))):
            link = dest / domain / cls_dir.name / f.name
            link.parent.mkdir(parents=True, exist_ok=True)
            if not link.exists():
                link.symlink_to(f.resolve())
            n += 1
    return n


def run(args: argparse.Namespace, tki_main: Callable[[list[str]], int]) -> int:
    """Run the demo; ``tki_main`` is the ``tki`` entry point (each step is the command a user would type)."""

    data = Path(args.data) if args.data else default_dataset_dir()
    if data is None:
        raise UsageError("no PACS images found: pass --data <domain>/<class>/<image> folder or set TKI_PACS_DIR")
    for d in (args.gallery_domain, args.query_domain):
        if not (data / d).is_dir():
            raise UsageError(f"no {d!r} domain under {data}; pass --data with the PACS images folder "
                             "(<domain>/<class>/<file>)")
    out = Path(args.out)
    ckpt, model_dir, gallery = out / "checkpoint", out / "model", out / "gallery"
    rng = random.Random(args.seed)
    t0 = time.perf_counter()

    train_argv = ["train", "--model", args.model, "--classes", ",".join(PACS_CLASSES), "--out", str(ckpt),
                  "--steps-expand", str(args.steps_expand), "--steps-aggregate", str(args.steps_aggregate),
                  "--seed", str(args.seed)]
    if args.pretrained:
        train_argv += ["--pretrained", args.pretrained]
    _step("1/4 train: domain expansion + hyperbolic aggregation on the PACS class names (text only)",
          ["tki", *train_argv])
    if tki_main(train_argv) != 0:
        return 1

    from tki_sdk.cli.export import main as export_main

    export_argv = ["--checkpoint", str(ckpt), "--out", str(model_dir), "--precision", "fp32,int8",
                   "--calib-images", str(data / args.gallery_domain)]
    if args.pretrained:
        export_argv += ["--pretrained", args.pretrained]
    _step("2/4 export: fused CLIP visual encoder + head to ONNX fp32 and int8, checked against torch",
          ["tki-export", *export_argv])
    if export_main(export_argv) != 0:
        return 1

    sample = out / "sample"
    n = _link_sample(data, args.gallery_domain, args.per_class, sample, rng)
    embed_argv = ["embed", "--model", str(model_dir), "--images", str(sample), "--out", str(gallery),
                  "--precision", "int8", "--overwrite"]
    _step(f"3/4 embed: {n} {args.gallery_domain} images into a usearch gallery (torch-free runtime, int8)",
          ["tki", *embed_argv])
    if tki_main(embed_argv) != 0:
        return 1

    from tki_sdk.runtime import Embedder, Gallery

    queries = [rng.choice(_files(data / args.query_domain / c)) for c in PACS_CLASSES
               if (data / args.query_domain / c).is_dir()]
    _step(f"4/4 search: one {args.query_domain} per class against the {args.gallery_domain} gallery",
          ["tki", "search", "--gallery", str(gallery), "--model", str(model_dir), "--image",
           *[str(q) for q in queries[:2]], "...", "-k", str(args.k)])
    embedder = Embedder(model_dir, precision="int8")
    g = Gallery.load(gallery)
    result = embedder.embed_images([str(q) for q in queries])
    keys, dists = g.search(result.embeddings, args.k, model_fingerprint=embedder.model_fingerprint)
    hits_right = 0
    for row, qi in enumerate(result.indices):
        q = queries[qi]
        metas = g.get_metadata(keys[row])
        classes = [m.get("class", "?") if m else "?" for m in metas]
        hits_right += sum(c == q.parent.name for c in classes)
        shown = ", ".join(f"{c} ({1 - d:.3f})" for c, d in zip(classes, dists[row]))
        print(f"  {q.parent.name:>9} sketch {q.name:<14} -> {shown}")
    total = len(result.indices) * args.k
    print(f"\nsame-class hits: {hits_right}/{total} (chance: {total / len(PACS_CLASSES):.1f})")


    parity = json.loads((model_dir / "parity.json").read_text())
    print("\nexport parity vs torch (min cosine over real and random inputs):")
    for name, rep in parity.get("artifacts", parity).items():
        if isinstance(rep, dict) and "min_cosine" in rep:
            print(f"  {name:<16} {rep['min_cosine']:.6f}  (threshold {rep.get('threshold')}, "
                  f"{'pass' if rep.get('passed', rep.get('pass')) else 'FAIL'})")
    weights = "random init: retrieval quality carries no meaning" if not args.pretrained else args.pretrained
    print(f"\nCLIP weights: {weights}. Finished in {time.perf_counter() - t0:.0f} s; everything is in {out}/")
    return 0
