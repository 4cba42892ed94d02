"""The whole runtime path runs with torch, torchvision, open_clip and geoopt blocked from import."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from runtime_fixtures import BLOCK_TRAINING_STACK, make_tiny_export, pacs_sample

SCRIPT = BLOCK_TRAINING_STACK + textwrap.dedent(
    """
    import json
    from pathlib import Path
    import numpy as np
    from PIL import Image

    export, images, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    import tki_sdk
    import tki_sdk.runtime as rt
    from tki_sdk.runtime import Embedder, Gallery, Preprocessor
    from tki_sdk.cli.runtime import main

    files = sorted(images.rglob("*.*"))
    pre = Preprocessor.from_metadata(export)
    x = pre.batch(files)
    emb = Embedder(export, threads=1)
    e1 = emb.embed_pixels(x)
    res = emb.embed_images(files, batch_size=3)
    assert not res.errors and np.allclose(res.embeddings, e1, atol=1e-6)
    g = Gallery(emb.embedding_dim, model_fingerprint=emb.model_fingerprint)
    g.add(np.arange(len(files)), res.embeddings, [{"path": str(f)} for f in files])
    keys, dist = g.search(res.embeddings[:2], 3, model_fingerprint=emb.model_fingerprint)
    assert keys[:, 0].tolist() == [0, 1], keys
    g.save(out / "g")
    assert len(Gallery.view(out / "g")) == len(files)
    assert main(["embed", "--model", str(export), "--images", str(images), "--out", str(out / "g2")]) == 0
    assert main(["search", "--gallery", str(out / "g2"), "--model", str(export), "--image", str(files[0]),
                 "-k", "2", "--json"]) == 0
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    try:
        import torch  # noqa: F401
    except ImportError:
        print("BLOCKED-OK")
    print("RUNTIME-OK")
    """
)


def test_runtime_works_with_torch_blocked(tmp_path, pacs_dir):
    export, _ = make_tiny_export(tmp_path / "export")
    images = tmp_path / "images"
    images.mkdir()
    for f in pacs_sample(pacs_dir, per_class=1):
        (images / f"{f.parts[-3]}_{f.name}").write_bytes(f.read_bytes())
    r = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(export), str(images), str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=str(Path(__file__).parent),
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "BLOCKED-OK" in r.stdout and "RUNTIME-OK" in r.stdout


def test_a_runtime_only_install_imports_every_runtime_module_without_the_distributed_extra():
    """``pip install tki-sdk[runtime]`` has neither torch nor Ray nor psutil (the distributed extra's): every
    runtime and CLI module must still import (``tki embed`` imported the Ray watchdog's psutil at load)."""
    code = textwrap.dedent("""
        import importlib, pkgutil, sys
        class Block:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in ("torch", "torchvision", "open_clip", "geoopt", "ray", "psutil"):
                    raise ImportError(f"blocked: {name}")
        sys.meta_path.insert(0, Block())
        import tki_sdk.runtime, tki_sdk.cli.main, tki_sdk.cli.runtime
        bad = []
        for m in pkgutil.walk_packages(tki_sdk.runtime.__path__, "tki_sdk.runtime."):
            try:
                importlib.import_module(m.name)
            except ImportError as e:
                bad.append(f"{m.name}: {e}")
        print(bad)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stdout + r.stderr[-2000:]
