"""The throughput suite's text rows: texts/s of Embedder.embed_texts and torch encode_text at batch 1 and 64."""
from __future__ import annotations

import json

import pytest

from text_fixtures import vanilla_export_with_text
from tki_sdk.benchmarks import throughput
from tki_sdk.common.model_metadata import ModelMetadata
from tki_sdk.train.model import TKIModel


def test_text_rows_at_batch_1_and_64(tmp_path_factory):
    export = vanilla_export_with_text(tmp_path_factory.mktemp("text_tp"))
    md = ModelMetadata.load(export)
    res = throughput.text_throughput(TKIModel.vanilla("TKI-Tiny-ViT"), md, export, threads=1, rounds=3)
    json.dumps(res)
    rows = {(r["backend"], r["batch_size"]) for r in res["records"]}
    names = {"torch:encode_text", "onnxruntime:text_fp32 raw", "onnxruntime:text_fp32 a photo of a {}."}
    assert rows == {(n, b) for n in names for b in (1, 64)}
    for r in res["records"]:
        assert r["texts_per_s"] == pytest.approx(r["batch_size"] / (r["median_ms"] / 1000))
        assert r["calls"] == 3 and r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]


def test_no_text_rows_for_an_export_without_text(tmp_path):
    from runtime_fixtures import make_tiny_export

    export, _ = make_tiny_export(tmp_path / "e")
    assert throughput.text_throughput(None, ModelMetadata.load(export), export, threads=1, rounds=1) is None
