"""Accuracy suite core on synthetic embeddings, and one small end-to-end run with a tiny random-init model."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tki_sdk.cli import bench as cli
from tki_sdk.benchmarks.accuracy import (
    RANDOM_INIT,
    AccuracyTable,
    cross_domain_table,
    describe_weights,
    embed_dataset,
    render_comparison,
    render_paper_table,
)
from tki_sdk.benchmarks.datasets import DomainDataset
from tki_sdk.benchmarks.metrics import average_precision, precision_at_k


def _domains(rng, noise, n=30, classes=4, dim=8, names=("a", "b", "c")):
    centres = np.eye(dim)[:classes] * 5.0
    out = {}
    for d in names:
        lab = rng.integers(0, classes, n)
        out[d] = (centres[lab] + noise * rng.standard_normal((n, dim)), lab)
    return out


def test_perfectly_separated_classes_give_100_percent():
    embs = _domains(np.random.default_rng(0), noise=0.01)
    t = cross_domain_table(embs, method="oracle", weights="test", ks=(5,))
    assert t.pairs() == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    for q, g in t.pairs():
        assert t.cells[q][g]["mAP"] == pytest.approx(1.0)
        assert t.cells[q][g]["mAP@5"] == pytest.approx(1.0)
    assert t.average("mAP") == pytest.approx(1.0)
    md = render_paper_table([t])
    assert "100.00" in md and "| oracle" in md


def test_cells_equal_the_metric_contract_and_averages():
    rng = np.random.default_rng(1)
    embs = _domains(rng, noise=3.0)
    t = cross_domain_table(embs, method="noisy", weights="test", ks=(7,))
    for q, g in t.pairs():
        qe, ql = embs[q]
        ge, gl = embs[g]
        s = (qe / np.linalg.norm(qe, axis=1, keepdims=True)) @ (ge / np.linalg.norm(ge, axis=1, keepdims=True)).T
        assert t.cells[q][g]["mAP"] == pytest.approx(average_precision(s, ql, gl).mean())
        assert t.cells[q][g]["mAP@7"] == pytest.approx(average_precision(s, ql, gl, 7).mean())
        assert t.cells[q][g]["Prec@7"] == pytest.approx(precision_at_k(s, ql, gl, 7).mean())
    # Row average = mean over the other domains; overall = mean over the 6 pairs.
    assert t.row_average("a", "mAP") == pytest.approx((t.cells["a"]["b"]["mAP"] + t.cells["a"]["c"]["mAP"]) / 2)
    assert t.average("Prec@7") == pytest.approx(np.mean([t.cells[q][g]["Prec@7"] for q, g in t.pairs()]))
    again = AccuracyTable.from_dict(json.loads(json.dumps(t.to_dict())))
    assert again.average("mAP") == t.average("mAP")


def test_comparison_reports_the_loss_against_the_reference():
    rng = np.random.default_rng(2)
    embs = _domains(rng, noise=1.5)
    ref = cross_domain_table(embs, method="torch", weights="w", ks=(10,))
    noisier = {d: (e + 2.0 * rng.standard_normal(e.shape), lab) for d, (e, lab) in embs.items()}
    art = cross_domain_table(noisier, method="int8", weights="w", ks=(10,))
    md = render_comparison([ref, art], reference=0)
    delta = 100 * (art.average("mAP") - ref.average("mAP"))
    assert delta < 0
    row = next(line for line in md.splitlines() if line.startswith("| int8"))
    assert f"{delta:+.2f}" in row
    assert "Reference for Δ: torch" in md


def test_describe_weights():
    assert describe_weights({"source": "random", "ref": None, "sha256": None}) == RANDOM_INIT
    assert describe_weights(None) == RANDOM_INIT
    d = describe_weights({"source": "file", "ref": "/w/clip.pt", "sha256": "ab" * 32}, {"path": "/ck", "sha256": "cd" * 32})
    assert "/w/clip.pt" in d and "ab" * 32 in d and "/ck" in d and "cd" * 32 in d
    assert "laion2b" in describe_weights({"source": "tag", "ref": "laion2b", "sha256": None})
    t = AccuracyTable("m", RANDOM_INIT, ["a"], {}, ["mAP"])
    assert not t.meaningful and not t.to_dict()["numbers_meaningful"]


def test_embed_dataset_with_a_path_based_embedding_function(tmp_path):
    for domain in ("art", "photo"):
        for cls in ("cat", "dog", "owl"):
            d = tmp_path / domain / cls
            d.mkdir(parents=True)
            for i in range(4):
                (d / f"{i}.jpg").write_bytes(b"x")
    ds = DomainDataset(tmp_path)

    def one_hot_from_path(paths):  # "embeds" an image as its class folder's one-hot vector
        return np.stack([np.eye(3)[ds.classes.index(Path(p).parent.name)] for p in paths])

    embs = embed_dataset(ds, one_hot_from_path, batch_size=5, progress=False)
    assert list(embs) == ["art", "photo"] and embs["art"][0].shape == (12, 3)
    t = cross_domain_table(embs, method="oracle", weights="test", ks=(200,))
    assert t.average("mAP") == 1.0 and t.average("Prec@200") == pytest.approx(4 / 200)

    with pytest.raises(ValueError, match="shape"):
        embed_dataset(ds, lambda paths: np.zeros((1, 3)), progress=False)
    with pytest.raises(ValueError, match="NaN"):
        embed_dataset(ds, lambda paths: np.full((len(paths), 3), np.nan), progress=False)


def test_run_needs_a_model(tmp_path, capsys):
    for domain in ("a", "b"):
        (tmp_path / "data" / domain / "cls").mkdir(parents=True)
        (tmp_path / "data" / domain / "cls" / "x.png").write_bytes(b"x")
    data = str(tmp_path / "data")
    assert cli.main(["accuracy", "--dataset-dir", data, "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model-dir" in err[0]
    # A folder without tki.json is a one-line error too.
    assert cli.main(["accuracy", "--dataset-dir", data, "--model-dir", str(tmp_path), "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "tki.json" in err[0]


def test_quick_run_tiny_vanilla_model_on_pacs(tmp_path, capsys, pacs_dir):
    pytest.importorskip("open_clip")
    import tki_sdk.train.model  # noqa: F401 - a project module: an import failure must fail this test
    code = cli.main(["accuracy", "--quick", "--dataset-dir", str(pacs_dir), "--domains", "photo,sketch", "--per-class", "3",
                     "--out-dir", str(tmp_path), "--no-progress"])
    assert code == 0
    doc = json.loads((tmp_path / "accuracy" / "quick.json").read_text())
    res = doc["results"]
    assert res["dataset"]["images"] == {"photo": 21, "sketch": 21}
    (table,) = res["tables"]
    assert table["weights"] == RANDOM_INIT and table["numbers_meaningful"] is False
    assert set(table["cells"]) == {"photo", "sketch"}
    for q, g in (("photo", "sketch"), ("sketch", "photo")):
        cell = table["cells"][q][g]
        assert 0.0 <= cell["mAP"] <= 1.0
        assert cell["Prec@200"] == pytest.approx(3 / 200)  # 3 of 21 gallery images share the class; Prec@k divides by k
    assert (tmp_path / "accuracy" / "quick.png").read_bytes()[:4] == b"\x89PNG"
    assert "carry no meaning" in capsys.readouterr().out


def test_top_k_only_tables_match_the_full_ones():
    embs = _domains(np.random.default_rng(3), noise=2.0, n=40)
    full = cross_domain_table(embs, method="a", weights="w", ks=(10,))
    topk = cross_domain_table(embs, method="b", weights="w", ks=(10,), full_map=False)
    assert topk.metrics == ["mAP@10", "mAP@10:min", "Prec@10"]
    for q, g in full.pairs():
        for m in topk.metrics:
            assert topk.cells[q][g][m] == full.cells[q][g][m]
    md = render_comparison([topk, topk])
    assert "max pair Δ mAP@10" in md


def test_model_dir_through_the_runtime_equals_a_numpy_reference(tmp_path, pacs_dir):
    pytest.importorskip("onnxruntime")
    import tki_sdk.runtime.engine.embedder  # noqa: F401 - a project module: an import failure must fail this test
    from runtime_fixtures import make_tiny_export, tiny_reference

    from tki_sdk.common.model_metadata import PreprocessConfig
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    export_dir, w = make_tiny_export(tmp_path / "export")
    code = cli.main(["accuracy", "--dataset-dir", str(pacs_dir), "--domains", "cartoon,photo", "--per-class", "2",
                     "--model-dir", str(export_dir), "--out-dir", str(tmp_path), "--no-progress", "--name", "tiny"])
    assert code == 0
    doc = json.loads((tmp_path / "accuracy" / "tiny.json").read_text())
    (table,) = doc["results"]["tables"]
    assert table["info"]["precision"] == "fp32" and table["info"]["artifact"]["sha256"]
    assert table["weights"] == RANDOM_INIT
    # Reference: the same images through the runtime preprocessing and the model in float64 numpy.
    ds = DomainDataset(pacs_dir, domains=["cartoon", "photo"]).sample(2, seed=0)
    pre = Preprocessor(PreprocessConfig.from_dict({"size": [32, 32]}))
    embs = {d: (tiny_reference(pre.batch(ds.paths(d)), w), ds.labels(d)) for d in ds.domains}
    ref = cross_domain_table(embs, method="numpy", weights="-", ks=(200,))
    for q, g in ref.pairs():
        for m in ref.metrics:
            assert table["cells"][q][g][m] == pytest.approx(ref.cells[q][g][m], abs=1e-9)


def _ball_domains(rng, n=60, classes=4, dim=8):
    """Class clusters inside the unit ball at different depths (so the metrics rank differently)."""
    out = {}
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    for d in ("a", "b", "c"):
        lab = rng.integers(0, classes, n)
        x = centres[lab] + 0.8 * rng.standard_normal((n, dim))
        x *= rng.uniform(0.05, 0.98, (n, 1)) / np.linalg.norm(x, axis=1, keepdims=True)
        out[d] = (x, lab)
    return out


def test_the_three_metrics_on_the_same_embeddings_against_brute_force():
    import geoopt
    import torch

    embs = _ball_domains(np.random.default_rng(5))
    ball = geoopt.PoincareBall(c=1.0)
    tables = {m: cross_domain_table(embs, method=f"x [{m}]", weights="test", ks=(10,), metric=m,
                                    curvature=1.0 if m == "poincare" else None, info={"metric_of": "x"})
              for m in ("cos", "ip", "poincare")}
    for q, g in tables["cos"].pairs():
        (qe, ql), (ge, gl) = embs[q], embs[g]
        scores = {
            "cos": (qe / np.linalg.norm(qe, axis=1, keepdims=True)) @ (ge / np.linalg.norm(ge, axis=1, keepdims=True)).T,
            "ip": qe @ ge.T,
            "poincare": -ball.dist(torch.from_numpy(qe)[:, None], torch.from_numpy(ge)[None]).numpy(),
        }
        for m, s in scores.items():
            assert tables[m].cells[q][g]["mAP"] == pytest.approx(average_precision(s, ql, gl).mean(), abs=1e-9)
            assert tables[m].cells[q][g]["Prec@10"] == pytest.approx(precision_at_k(s, ql, gl, 10).mean(), abs=1e-9)
    assert len({round(t.average("mAP"), 6) for t in tables.values()}) == 3  # the metrics do rank differently
    from tki_sdk.benchmarks.accuracy import metric_choice

    choice = metric_choice(list(tables.values()), "mAP@10")
    best = max(tables, key=lambda m: tables[m].average("mAP@10"))
    assert choice["methods"]["x"]["pick"] == best and choice["numbers_meaningful"]


def _exact_scores(qe, ge, metric):
    """Higher is better: cosine, inner product, or minus the Poincaré distance (c = 1), in float64."""
    if metric == "cos":
        return (qe / np.linalg.norm(qe, axis=1, keepdims=True)) @ (ge / np.linalg.norm(ge, axis=1, keepdims=True)).T
    if metric == "ip":
        return qe @ ge.T
    d2 = ((qe[:, None] - ge[None]) ** 2).sum(-1)
    den = (1 - (qe ** 2).sum(1))[:, None] * (1 - (ge ** 2).sum(1))[None]
    return -np.arccosh(1 + 2 * d2 / den)


@pytest.mark.parametrize("metric", ["cos", "ip", "poincare"])
def test_f32_gallery_returns_the_exact_top_k_up_to_near_ties(metric):
    # The data holds near-ties (adjacent exact scores 5e-6 apart), which float32 SIMD kernels may order
    # either way: each returned item must score what the exact item of that rank scores, within 1e-4.
    from tki_sdk.runtime.index.gallery import Gallery

    embs = _ball_domains(np.random.default_rng(6))
    c = 1.0 if metric == "poincare" else None
    for g, (ge, _) in embs.items():
        gal = Gallery(ge.shape[1], metric=metric, dtype="f32", curvature=c)
        gal.add(np.arange(len(ge), dtype=np.uint64), ge)
        for q, (qe, _) in embs.items():
            keys, _ = gal.search(qe, 10)
            s = _exact_scores(qe, ge, metric)
            got = np.take_along_axis(s, keys.astype(np.int64), axis=1)
            want = -np.sort(-s, axis=1)[:, :10]
            np.testing.assert_allclose(got, want, atol=1e-4 * max(1.0, float(np.abs(want).max())))


@pytest.mark.parametrize("metric", ["cos", "ip", "poincare"])
def test_gallery_table_matches_exact_search_on_small_galleries(metric):
    from tki_sdk.benchmarks.accuracy import gallery_table

    embs = _ball_domains(np.random.default_rng(6))
    c = 1.0 if metric == "poincare" else None
    exact = cross_domain_table(embs, method="x", weights="test", ks=(10,), metric=metric, curvature=c)
    for dtype in ("f32", "f16", "i8"):
        gal = gallery_table(embs, method="x", weights="test", dtype=dtype, k=10, metric=metric, curvature=c)
        assert gal.metrics == ["mAP@10", "Prec@10"]
        for q, g in exact.pairs():
            # 60 items per gallery: the top 10 is exact up to near-ties (test above), which may swap a pair in
            # float32 and a few in float16 / int8; a wrong key-to-label mapping would land near chance (0.25).
            tol = 0.02 if dtype == "f32" else 0.05
            assert gal.cells[q][g]["Prec@10"] == pytest.approx(exact.cells[q][g]["Prec@10"], abs=tol)
            assert gal.cells[q][g]["mAP@10"] == pytest.approx(exact.cells[q][g]["mAP@10"], abs=tol)


def test_checkpoint_run_compares_metrics_and_scores_the_shipped_gallery(tmp_path, tiny_checkpoint, pacs_dir):
    code = cli.main(["accuracy", "--checkpoint", str(tiny_checkpoint), "--dataset-dir", str(pacs_dir),
                     "--domains", "photo,sketch", "--per-class", "3", "--out-dir", str(tmp_path), "--no-progress",
                     "--name", "ck"])
    assert code == 0
    res = json.loads((tmp_path / "accuracy" / "ck.json").read_text())["results"]
    assert [t["info"]["metric"] for t in res["tables"]] == ["cos", "ip", "poincare"]
    assert len(res["gallery_tables"]) == 6  # each metric through f16 and i8 galleries
    choice = res["metric_choice"]
    assert choice["numbers_meaningful"] is False and "says nothing" in choice["note"]
    assert "Shipped search path" in res["markdown"] and "Metric choice" in res["markdown"]


def _brute_ap(scores: np.ndarray, relevant: np.ndarray) -> float:
    """Average precision over the whole ranking, written out: mean of precision at each relevant hit."""
    order = np.argsort(-scores, kind="stable")
    rel = relevant[order]
    hits = np.flatnonzero(rel)
    return float(np.mean([(i + 1) / (r + 1) for i, r in enumerate(hits)])) if len(hits) else 0.0


def test_text_table_scores_class_queries_against_each_gallery_by_brute_force():
    from tki_sdk.benchmarks.accuracy import class_queries, render_text_table, text_table

    rng = np.random.default_rng(5)
    embs = _domains(rng, noise=3.0, n=40)
    text = np.eye(8)[:4] * 5.0 + 0.5 * rng.standard_normal((4, 8))  # one query per class near its centre
    t = text_table(text, embs, method="m", weights="w", query="raw", ks=(10,))
    assert t.domains == ["text", "a", "b", "c"] and t.pairs() == [("text", g) for g in "abc"]
    for g, (ge, gl) in embs.items():
        cos = (text / np.linalg.norm(text, axis=1, keepdims=True)) @ (ge / np.linalg.norm(ge, axis=1, keepdims=True)).T
        want = np.mean([_brute_ap(cos[c], gl == c) for c in range(4)])
        assert t.cells["text"][g]["mAP"] == pytest.approx(want, abs=1e-9)
        prec = np.mean([(gl[np.argsort(-cos[c], kind="stable")[:10]] == c).mean() for c in range(4)])
        assert t.cells["text"][g]["Prec@10"] == pytest.approx(prec, abs=1e-9)
    md = render_text_table([t], t.metrics)
    row = next(ln for ln in md.splitlines() if ln.startswith("| m "))
    assert [c.strip() for c in row.strip("|").split("|")][:2] == ["m", "raw"]
    assert class_queries(["The_Eiffel_Tower", "dog"]) == ["The Eiffel Tower", "dog"]
    with pytest.raises(ValueError, match="finite"):
        text_table(np.full((4, 8), np.nan), embs, method="m", weights="w", query="raw")


def test_text_rows_of_an_export_equal_torch_text_and_runtime_images(tmp_path, tmp_path_factory, pacs_dir):
    """The suite's text rows for an export with a text artifact, against an independent reference: the text
    of each class through torch (``TKIModel.encode_text``), the images through the runtime, AP written out."""
    pytest.importorskip("open_clip")
    from text_fixtures import vanilla_export_with_text

    from tki_sdk.runtime import Embedder
    from tki_sdk.train.model import TKIModel

    export = vanilla_export_with_text(tmp_path_factory.mktemp("acc_text"))
    code = cli.main(["accuracy", "--dataset-dir", str(pacs_dir), "--domains", "photo,sketch", "--per-class", "3",
                     "--model-dir", str(export), "--gallery", "none", "--out-dir", str(tmp_path), "--no-progress",
                     "--name", "text"])
    assert code == 0
    res = json.loads((tmp_path / "accuracy" / "text.json").read_text())["results"]
    text = res["text"]
    assert text["queries"] == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert sorted(t["info"]["query_construction"] for t in text["tables"]) == ["raw", "template"]
    assert len(text["skipped"]) == 1 and "ensemble" in text["skipped"][0] and "vanilla" in text["skipped"][0]
    assert all(t["weights"] == RANDOM_INIT for t in text["tables"])

    ds = DomainDataset(pacs_dir, domains=["photo", "sketch"]).sample(3, seed=0)
    emb = Embedder(export, threads=1)
    model = TKIModel.vanilla("TKI-Tiny-ViT")
    for t in text["tables"]:
        q = text["queries"] if t["info"]["query_construction"] == "raw" else [f"a photo of a {c}." for c in text["queries"]]
        te = model.encode_text(q).detach().numpy().astype(np.float64)
        te /= np.linalg.norm(te, axis=1, keepdims=True)
        for g in ("photo", "sketch"):
            ge = emb.embed_images([str(p) for p in ds.paths(g)]).embeddings.astype(np.float64)
            ge /= np.linalg.norm(ge, axis=1, keepdims=True)
            gl = ds.labels(g)
            want = np.mean([_brute_ap(te[c] @ ge.T, gl == c) for c in range(len(q))])
            assert t["cells"]["text"][g]["mAP"] == pytest.approx(want, abs=2e-3)  # fp32 artifact vs torch: near ties
