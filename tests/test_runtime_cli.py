"""``tki embed`` / ``tki search`` / ``describe`` through runtime.cli.main, on PACS samples and the tiny ONNX."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

from runtime_fixtures import build_hostile_folder, copy_tree_sample, make_tiny_export, pacs_sample
from tki_sdk.runtime import Embedder, Gallery, gallery_from_folder
from tki_sdk.cli.runtime import describe, main, parse_where, register


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pacs_dir):
    root = tmp_path_factory.mktemp("cli")
    export, _ = make_tiny_export(root / "export")
    files = pacs_sample(pacs_dir, per_class=3, classes=("dog", "horse", "house"))
    images = root / "images"
    copied = copy_tree_sample(files, pacs_dir, images)
    return root, export, images, copied


@pytest.fixture(scope="module")
def gallery(setup):
    root, export, images, _ = setup
    out = root / "g"
    assert main(["embed", "--model", str(export), "--images", str(images), "--out", str(out), "--batch-size", "8",
                 "--threads", "1"]) == 0
    return out


def test_embed_builds_gallery_with_domain_and_class(setup, gallery, capsys):
    _, export, images, copied = setup
    g = Gallery.load(gallery)
    assert len(g) == len(copied) == 36
    emb = Embedder(export, threads=1)
    assert g.model_fingerprint == emb.model_fingerprint
    metas = g.get_metadata(g.keys())
    assert {m["domain"] for m in metas} == {"art_painting", "cartoon", "photo", "sketch"}
    assert {m["class"] for m in metas} == {"dog", "horse", "house"}
    # stored vectors are the embedder's embeddings of those files
    key = int(g.keys()[5])
    path = g.get_metadata([key])[0]["path"]
    np.testing.assert_allclose(g.get_vectors([key])[0], emb.embed_image(path), atol=1e-5)


def test_search_text_json_and_where(setup, gallery, capsys):
    _, export, images, copied = setup
    query = next(p for p in copied if "sketch" in p.parts and "dog" in p.parts)
    capsys.readouterr()
    assert main(["search", "--gallery", str(gallery), "--model", str(export), "--image", str(query), "-k", "3",
                 "--json", "--threads", "1"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(out) == 1 and out[0]["query"] == str(query)
    hits = out[0]["hits"]
    assert len(hits) == 3 and hits[0]["path"] == str(query.resolve()) and hits[0]["distance"] < 1e-5
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["distance"] <= n["distance"] for h, n in zip(hits, hits[1:]))

    assert main(["search", "--gallery", str(gallery), "--model", str(export), "--image", str(query), "-k", "50",
                 "--where", "domain=photo", "--where", "class=horse,house", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out.splitlines()[0])["hits"]
    assert len(hits) == 6  # 3 horse + 3 house photos, fewer than k
    assert all(h["domain"] == "photo" and h["class"] in ("horse", "house") for h in hits)

    assert main(["search", "--gallery", str(gallery), "--model", str(export), "--images", str(images / "cartoon"),
                 "-k", "2"]) == 0
    text = capsys.readouterr().out
    assert text.count("  1. ") == 9 and "[cartoon/" in text


def test_embed_reports_skipped_files(setup, pacs_dir, tmp_path, capsys):
    _, export, _, _ = setup
    folder = tmp_path / "hostile"
    expect = build_hostile_folder(folder / "photo" / "dog", pacs_sample(pacs_dir, per_class=1))
    errors = tmp_path / "errors.jsonl"
    capsys.readouterr()
    rc = main(["embed", "--model", str(export), "--images", str(folder), "--out", str(tmp_path / "g"),
               "--errors", str(errors)])
    assert rc == 0
    err = capsys.readouterr().err
    bad = {n for n, r in expect.items() if r is not None}
    lines = [json.loads(x) for x in errors.read_text().splitlines()]
    assert {json.loads(json.dumps(x))["path"].rsplit("/", 1)[1] for x in lines} == bad
    for x in lines:
        assert expect[x["path"].rsplit("/", 1)[1]] in x["reason"]
        assert x["path"] in err  # also named in the final report
    assert f"skipped {len(bad)} of {len(expect)} files" in err
    assert f"indexed {len(expect) - len(bad)} of {len(expect)}" in err
    assert len(Gallery.load(tmp_path / "g")) == len(expect) - len(bad)


def _one_line_error(capsys, argv, match):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0
    assert len(err) == 1 and match in err[0], err
    return err[0]


def test_bad_inputs_give_one_line_and_nonzero_exit(setup, gallery, tmp_path, capsys):
    _, export, images, copied = setup
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "a.jpg").write_text("no")
    _one_line_error(capsys, ["embed", "--model", str(tmp_path / "nope"), "--images", str(images), "--out",
                             str(tmp_path / "o")], "does not exist")
    _one_line_error(capsys, ["embed", "--model", str(tmp_path / "empty"), "--images", str(images), "--out",
                             str(tmp_path / "o")], "tki.json")
    _one_line_error(capsys, ["embed", "--model", str(export), "--images", str(tmp_path / "empty"), "--out",
                             str(tmp_path / "o")], "no image files")
    _one_line_error(capsys, ["embed", "--model", str(export), "--images", str(images), "--out", str(tmp_path / "junk")],
                    "is not a gallery")
    other_model, _ = make_tiny_export(tmp_path / "other_model", seed=7)
    _one_line_error(capsys, ["embed", "--model", str(other_model), "--images", str(images), "--out", str(gallery)],
                    "--overwrite")
    _one_line_error(capsys, ["embed", "--model", str(export), "--images", str(images), "--out", str(tmp_path / "o"),
                             "--batch-size", "0"], "--batch-size must be >= 1")
    capsys.readouterr()
    rc = main(["embed", "--model", str(export), "--images", str(tmp_path / "junk"), "--out", str(tmp_path / "o")])
    assert rc == 1 and "could be read" in capsys.readouterr().err and not (tmp_path / "o").exists()
    q = str(copied[0])
    _one_line_error(capsys, ["search", "--gallery", str(gallery), "--model", str(export), "--image", q,
                             "--where", "domain"], "expected NAME=VALUE")
    _one_line_error(capsys, ["search", "--gallery", str(gallery), "--model", str(export), "--image", q,
                             "--where", "=sketch"], "expected NAME=VALUE")
    _one_line_error(capsys, ["search", "--gallery", str(tmp_path / "empty"), "--model", str(export), "--image", q],
                    "not a gallery")
    _one_line_error(capsys, ["search", "--gallery", str(gallery), "--model", str(export), "--image",
                             str(tmp_path / "missing.jpg")], "not found")
    _one_line_error(capsys, ["search", "--gallery", str(gallery), "--model", str(export), "--image", q, "-k", "0"],
                    "-k must be >= 1")
    other, _ = make_tiny_export(tmp_path / "other", seed=5)
    _one_line_error(capsys, ["search", "--gallery", str(gallery), "--model", str(other), "--image", q],
                    "rebuild the gallery")
    # argparse errors are one line too in the standalone parser, and the exit status is 2
    assert main(["search", "--gallery", str(gallery)]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_help_has_examples_and_register_adds_both(capsys):
    parser = argparse.ArgumentParser(prog="tki")
    sub = parser.add_subparsers(dest="cmd")
    register(sub)
    for cmd in ("embed", "search"):
        with pytest.raises(SystemExit):
            parser.parse_args([cmd, "--help"])
        assert "example:" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "example:" in capsys.readouterr().out


def test_describe_export_gallery_and_neither(setup, gallery, tmp_path):
    _, export, _, _ = setup
    text = describe(export)
    assert text is not None and "tiny-test-0" in text and "fp32" in text and "32x32" in text
    assert describe(export / "tki.json") == text
    g = describe(gallery)
    assert g is not None and "items:        36" in g and "domain:" in g and "class:" in g
    assert describe(tmp_path) is None
    assert describe(tmp_path / "nothing") is None


def test_parse_where():
    assert parse_where([]) is None
    assert parse_where(["domain=sketch", "class=dog,horse"]) == {"domain": ["sketch"], "class": ["dog", "horse"]}
    assert parse_where(["label=3"]) == {"label": ["3", 3]}


def test_gallery_from_folder_equals_cli_gallery(setup, gallery):
    _, export, images, copied = setup
    emb = Embedder(export, threads=1)
    g, res = gallery_from_folder(images, emb, batch_size=5, exact=True)
    assert not res.errors and len(g) == len(copied) and g.model_fingerprint == emb.model_fingerprint
    cli = Gallery.view(gallery)
    q = emb.embed_images(copied[:4]).embeddings
    k1, d1 = g.search(q, 5, where={"domain": "sketch"})
    k2, d2 = cli.search(q, 5, where={"domain": "sketch"})
    np.testing.assert_array_equal(k1, k2)
    np.testing.assert_allclose(d1, d2, atol=1e-6)
    assert g.get_metadata(k1[0]) == cli.get_metadata(k2[0])


def test_bad_errors_or_out_path_fails_before_embedding(setup, tmp_path, capsys, monkeypatch):
    _, export, images, copied = setup
    calls: list[int] = []
    real = Embedder.embed_images
    monkeypatch.setattr(Embedder, "embed_images", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    a_file = tmp_path / "plain.txt"
    a_file.write_text("x")
    base = ["embed", "--model", str(export), "--images", str(images)]
    _one_line_error(capsys, base + ["--out", str(tmp_path / "g1"), "--errors", str(tmp_path / "no" / "e.jsonl")],
                    "cannot write --errors")
    _one_line_error(capsys, base + ["--out", str(tmp_path / "g1"), "--errors", str(tmp_path)], "cannot write --errors")
    _one_line_error(capsys, base + ["--out", str(a_file / "g")], "is a file, not a folder")
    assert not calls and not (tmp_path / "g1").exists()


def test_gallery_saved_before_errors_file_and_write_failure_is_one_line(setup, tmp_path, capsys):
    _, export, _, copied = setup
    folder = tmp_path / "imgs" / "photo" / "dog"
    folder.mkdir(parents=True)
    for p in copied[:3]:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.jpg").write_bytes(b"not an image")
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full on this platform")
    out = tmp_path / "g"
    capsys.readouterr()
    rc = main(["embed", "--model", str(export), "--images", str(tmp_path / "imgs"), "--out", str(out),
               "--errors", "/dev/full"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and "Traceback" not in "\n".join(err)
    assert "cannot write --errors /dev/full" in err[-1] and "was saved" in err[-1]
    assert len(Gallery.load(out)) == 3
