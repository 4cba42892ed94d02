"""Search by words with the runtime: ``Embedder.embed_texts`` and ``tki search --text``, torch blocked."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import BLOCK_TRAINING_STACK, make_tiny_export, one_error_line, pacs_sample, run_tki
from text_fixtures import vanilla_export_with_text
from tki_sdk.common.model_metadata import ModelMetadata

SCRIPT = BLOCK_TRAINING_STACK + textwrap.dedent(
    """
    import contextlib, io, json
    from pathlib import Path
    import numpy as np

    export, images, out = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    from tki_sdk.runtime import Embedder
    from tki_sdk.cli.runtime import main

    emb = Embedder(export, threads=1)
    np.save(out / "raw.npy", emb.embed_texts(["a dog", "a horse"], template="raw"))
    np.save(out / "default.npy", emb.embed_texts(["dog", "horse"]))
    np.save(out / "custom.npy", emb.embed_texts(["a dog"], template="a sketch of {}"))
    assert main(["embed", "--model", str(export), "--images", str(images), "--out", str(out / "g")]) == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["search", "--gallery", str(out / "g"), "--model", str(export), "--text", "dog",
                   "--text", "horse", "-k", "3", "--json"])
    assert rc == 0
    (out / "hits.jsonl").write_text(buf.getvalue())
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("TEXT-RUNTIME-OK")
    """
)


def _cos(a, b):
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_search_by_text_with_torch_blocked(tmp_path, tmp_path_factory, pacs_dir):
    export = vanilla_export_with_text(tmp_path_factory.mktemp("text_search"))
    images = tmp_path / "images"
    images.mkdir()
    for f in pacs_sample(pacs_dir, per_class=1):
        (images / f"{f.parts[-3]}_{f.parts[-2]}_{f.name}").write_bytes(f.read_bytes())
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(export), str(images), str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).parent))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TEXT-RUNTIME-OK" in r.stdout

    # independent reference: open_clip's tokenizer and text tower in torch (TKIModel.encode_text)
    from tki_sdk.train.model import TKIModel

    model = TKIModel.vanilla("TKI-Tiny-ViT")
    raw_ref = model.encode_text(["a dog", "a horse"]).numpy()
    default_ref = model.encode_text(["a photo of a dog.", "a photo of a horse."]).numpy()
    assert _cos(np.load(tmp_path / "raw.npy"), raw_ref).min() >= 0.9999
    assert _cos(np.load(tmp_path / "default.npy"), default_ref).min() >= 0.9999
    assert _cos(np.load(tmp_path / "custom.npy"), model.encode_text(["a sketch of a dog"]).numpy()).min() >= 0.9999

    # the CLI's hits are the brute-force top 3 of the gallery by cosine with the reference query vectors
    from tki_sdk.runtime.index.gallery import Gallery

    g = Gallery.view(tmp_path / "g")
    keys = np.asarray(g.keys())
    vecs = g.get_vectors(keys).astype(np.float64)
    lines = [json.loads(ln) for ln in (tmp_path / "hits.jsonl").read_text().splitlines()]
    assert [ln["query"] for ln in lines] == ["dog", "horse"]
    for ln, q in zip(lines, default_ref):
        sims = vecs @ q / (np.linalg.norm(vecs, axis=1) * np.linalg.norm(q))
        order = np.argsort(-sims)[:3]
        assert [h["key"] for h in ln["hits"]] == [int(k) for k in keys[order]]
        assert np.allclose([h["distance"] for h in ln["hits"]], 1 - sims[order], atol=1e-4)


def test_text_on_an_export_without_text_is_one_line_exit_2(tmp_path, pacs_dir, capsys):
    export, _ = make_tiny_export(tmp_path / "old_export")  # an export as written before text search
    images = tmp_path / "images"
    images.mkdir()
    for f in pacs_sample(pacs_dir, per_class=1)[:4]:
        (images / f"{f.parts[-3]}_{f.parts[-2]}_{f.name}").write_bytes(f.read_bytes())
    rc, _, err = run_tki(["embed", "--model", export, "--images", images, "--out", tmp_path / "g"], capsys)
    assert rc == 0, err  # images still work
    rc, out, err = run_tki(["search", "--gallery", tmp_path / "g", "--model", export, "--text", "a dog"], capsys)
    assert rc == 2 and not out
    line = one_error_line(err, "tki search", ignore_model_line=True)
    assert "no text encoder" in line and "re-export" in line and "--no-text" in line

    from tki_sdk.runtime.engine.embedder import Embedder
    from tki_sdk.runtime.engine.text_encoder import TextUnavailableError

    emb = Embedder(export, threads=1)
    assert not emb.has_text
    with pytest.raises(TextUnavailableError, match="re-export the model with tki-export"):
        emb.embed_texts(["a dog"])
    assert emb.embed_images(sorted(images.iterdir())).embeddings.shape[0] == 4


def test_bad_text_arguments_are_usage_errors(tmp_path, tmp_path_factory, capsys):
    export = vanilla_export_with_text(tmp_path_factory.mktemp("text_search"))
    from tki_sdk.runtime.index.gallery import Gallery

    g = Gallery(32, model_fingerprint=ModelMetadata.load(export).fingerprint())
    g.add(np.arange(3), np.eye(3, 32, dtype=np.float32), [{"path": f"{i}.jpg"} for i in range(3)])
    g.save(tmp_path / "g")
    base = ["search", "--gallery", tmp_path / "g", "--model", export]
    for extra, words in ((["--text", "  "], "--text is empty"),
                         (["--text", "dog", "--text-template", "nonsense"], "--text-template"),
                         (["--text", "dog", "--text-template", "ensemble"], "no learned domain vectors"),
                         (["--image", "x.jpg", "--text-template", "raw"], "--text-template applies")):
        rc, out, err = run_tki(base + extra, capsys)
        assert rc == 2, (extra, err)
        assert words in one_error_line(err, "tki search", ignore_model_line=True)
