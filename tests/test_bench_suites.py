"""The parity and train suites in --quick mode write valid JSON and a PNG with real measurements."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tki_sdk.cli.bench import main


def _result(out: Path, suite: str) -> dict:
    files = list((out / suite).glob("*.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())
    assert doc["suite"] == suite and "cpu" in json.dumps(doc["machine"]).lower()
    return doc["results"]


def _png(path: str) -> None:
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # over 20 s: run by .ci/run after the default test run (pytest -m slow)
def test_parity_quick_exports_and_checks_every_artifact(tmp_path: Path, pacs_dir: Path) -> None:
    rc = main(["parity", "--quick", "--out-dir", str(tmp_path), "--no-progress", "--dataset-dir", str(pacs_dir)])
    assert rc == 0
    res = _result(tmp_path, "parity")
    arts = {a["artifact"]: a for a in res["artifacts"]}
    assert set(arts) == {"fp32", "fp16", "int8"}
    assert arts["fp32"]["min_cosine"] >= 0.99999 and arts["int8"]["min_cosine"] >= 0.99
    assert res["images"] == 28 and res["passed"] is True  # 4 domains x 7 classes x 1
    assert "random init" in res["weights"]
    _png(res["plots"][0])


def test_parity_needs_a_model_dir(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["parity", "--out-dir", str(tmp_path)]) == 2
    assert "--model-dir" in capsys.readouterr().err


def test_train_quick_times_both_stages(tmp_path: Path) -> None:
    rc = main(["train", "--quick", "--model", "TKI-Tiny-ViT", "--prompts", "4", "--classes", "dog,horse,house",
               "--out-dir", str(tmp_path), "--no-progress"])
    assert rc == 0
    res = _result(tmp_path, "train")
    assert len(res["stage1_truncated_s"]) == 2 and all(t > 0 for t in res["stage1_truncated_s"])
    assert res["stage1_full_median_s"] > 0 and res["stage2_median_s"] > 0
    assert res["weights"]["source"] == "random"
    _png(res["plots"][0])


def test_bad_option_values_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model", "TKI-Tiny-ViT", "--prompts", "1", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "P >= 2" in err[0]


@pytest.mark.slow  # over 20 s: run by .ci/run after the default test run (pytest -m slow)
def test_embed_quick_measures_files_against_tensors(tmp_path: Path, pacs_dir: Path) -> None:
    rc = main(["embed", "--quick", "--images", "24", "--out-dir", str(tmp_path), "--no-progress",
               "--dataset-dir", str(pacs_dir)])
    assert rc == 0
    res = _result(tmp_path, "embed")
    assert res["images"] == 24 and set(res["rates"]) == {
        "decode+preprocess (1 thread)", "inference (tensors)", "end to end (files)"}
    assert all(v > 0 for v in res["rates"].values())
    assert res["max_abs_diff_e2e_vs_tensors"] < 1e-5  # files and tensors give the same embeddings
    _png(res["plots"][0])


@pytest.mark.slow  # over 20 s: run by .ci/run after the default test run (pytest -m slow)
def test_serve_quick_drives_a_real_server_at_each_level(tmp_path: Path, pacs_dir: Path) -> None:
    rc = main(["serve", "--quick", "--dataset-dir", str(pacs_dir), "--levels", "1,4", "--level-seconds", "2",
               "--soak-seconds", "0", "--vector-gallery", "3000", "--vector-levels", "1,4", "--out-dir", str(tmp_path),
               "--no-progress"])
    assert rc == 0
    res = _result(tmp_path, "serve")
    assert res["server_exit_codes"] == {"batching": 0, "batch-1": 0}  # both uvicorn processes drained
    for mode in ("batching", "batch-1"):
        assert [lv["concurrency"] for lv in res["levels"][mode]] == [1, 4]
        assert all(lv["requests"] > 0 and lv["errors"] == 0 and lv["qps"] > 0 for lv in res["levels"][mode])
    assert all(lv["mean_batch_size"] == 1.0 for lv in res["levels"]["batch-1"])
    assert res["embed_images_img_per_s"] > 0 and res["batching_gain_at"]["concurrency"] == 4
    _png(res["plots"][0])
    vec = res["vector_queries"]  # vector queries through the service, once per HNSW backend
    assert vec["vectors"] == 3000 and set(vec["backends"]) == {"usearch", "hnswlib", "faiss"}
    for b in vec["backends"].values():
        assert b["exit_code"] == 0 and [lv["concurrency"] for lv in b["levels"]] == [1, 4]
        assert all(lv["requests"] > 0 and lv["errors"] == 0 for lv in b["levels"])


def test_serve_suite_refuses_bad_levels_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["serve", "--quick", "--levels", "0", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--levels" in err[0]
    assert main(["serve", "--quick", "--vector-levels", "x", "--out-dir", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--vector-levels" in err[0]


def test_embed_suite_samples_files_from_the_dataset(pacs_dir: Path) -> None:
    import argparse

    from tki_sdk.benchmarks.embed import _sample_paths
    from tki_sdk.common.imagefolders import list_images

    picked = _sample_paths(argparse.Namespace(dataset_dir=pacs_dir, seed=0), 12)
    every = {f.path.resolve() for f in list_images(pacs_dir)}
    assert len(picked) == 12 == len(set(picked)) and {p.resolve() for p in picked} <= every
    assert picked == _sample_paths(argparse.Namespace(dataset_dir=pacs_dir, seed=0), 12)  # seeded
