"""The three on-disk contracts: files written by the previous format still load (fixtures written by tki-sdk
at format 1), facts are stored once, and unknown major versions are refused with one line."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tki_sdk.common.checkpoint_config import CheckpointConfig
from tki_sdk.common.contract import ContractError
from tki_sdk.common.gallery_manifest import GalleryManifest
from tki_sdk.common.model_metadata import FORMAT_VERSION, ModelMetadata

FIX = Path(__file__).parent / "fixtures" / "contracts_v1"
#: ModelMetadata.fingerprint() of fixtures/contracts_v1/tki.json as computed by the format-1 code that wrote it;
#: galleries built with that export record it, so it must never change.
V1_FINGERPRINT = "3fd07eaf2fdf179f363ebca05b63858db8a827c85dc99210aea510bc8c9bc945"


def _raw(name: str) -> dict:
    return json.loads((FIX / name).read_text())


def test_v1_tki_json_loads_with_the_same_fingerprint_and_curvature_once(tmp_path):
    raw = _raw("tki.json")
    md = ModelMetadata.load(FIX / "tki.json")
    assert md.fingerprint() == V1_FINGERPRINT
    assert md.curvature == raw["curvature"] == raw["head_config"]["curvature"]
    assert md.embedding_dim == raw["embedding_dim"] and md.artifacts.keys() == raw["artifacts"].keys()
    md.save(tmp_path / "tki.json")
    new = json.loads((tmp_path / "tki.json").read_text())
    # written once: no top-level copies of the curvature, the image size or the precision list
    assert "curvature" not in new and "image_size" not in new and "precisions" not in new
    assert new["format_version"] == FORMAT_VERSION and new["head_config"] == raw["head_config"]
    again = ModelMetadata.load(tmp_path / "tki.json")
    assert again.fingerprint() == V1_FINGERPRINT and again.curvature == md.curvature
    assert again.preprocess == md.preprocess and again.extra["export"] == raw["export"]


def test_euclidean_and_no_head_have_no_curvature():
    raw = _raw("tki.json")
    raw["head_config"] = {**raw["head_config"], "geometry": "euclidean"}
    assert ModelMetadata.from_dict(raw).curvature is None
    assert ModelMetadata.from_dict({**_raw("tki.json"), "head": "none", "head_config": None}).curvature is None


def test_v1_checkpoint_config_loads_and_drops_copies(tmp_path):
    raw = _raw("config.json")
    cfg = CheckpointConfig.load(FIX / "config.json")
    assert cfg.curvature == raw["curvature"] == raw["head"]["curvature"]
    assert cfg.embedding_dim == raw["embedding_dim"] == raw["head"]["in_dim"]
    assert cfg.run == {k: raw["train_config"][k] for k in ("device", "full_context", "clip_init_seed", "out")}
    assert cfg.weights_file_sha256 == raw["weights_file_sha256"] and cfg.classes == raw["classes"]
    d = cfg.to_dict()
    assert "curvature" not in d and "embedding_dim" not in d and "train_config" not in d
    assert CheckpointConfig.from_dict(d) == cfg


@pytest.mark.parametrize("name", ["gallery_hnsw_i8.json", "gallery_exact_f32.json"])
def test_v1_gallery_manifest_round_trips(name, tmp_path):
    raw = _raw(name)
    m = GalleryManifest.load(FIX / name)
    assert (m.ndim, m.dtype, m.exact, m.count, m.rescore) == (raw["ndim"], raw["dtype"], raw["exact"], raw["count"],
                                                               raw["rescore"])
    assert m.to_dict() == raw


def test_a_v1_gallery_folder_loads(tmp_path):
    """A gallery folder whose gallery.json is the format-1 fixture (index and metadata rebuilt here)."""
    from tki_sdk.runtime.index.gallery import Gallery

    raw = _raw("gallery_exact_f32.json")
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((raw["count"], raw["ndim"])).astype(np.float32)
    g = Gallery(raw["ndim"], exact=True, model_fingerprint=raw["model_fingerprint"], model_info=raw["model"])
    g.add(np.arange(raw["count"], dtype=np.uint64), vecs, [{"i": i} for i in range(raw["count"])])
    g.save(tmp_path / "g")
    version = next((tmp_path / "g").glob("v-*"))
    (version / "gallery.json").write_text(json.dumps(raw))
    loaded = Gallery.load(tmp_path / "g")
    assert len(loaded) == raw["count"] and loaded.model_fingerprint == raw["model_fingerprint"]
    keys, _ = loaded.search(vecs[:3], 1)
    assert keys[:, 0].tolist() == [0, 1, 2]


@pytest.mark.parametrize("loader,name,field", [
    (ModelMetadata.from_dict, "tki.json", "format_version"),
    (CheckpointConfig.from_dict, "config.json", "format"),
    (GalleryManifest.from_dict, "gallery_exact_f32.json", "format_version"),
])
def test_newer_major_version_is_refused_in_one_line(loader, name, field):
    raw = {**_raw(name), field: 99}
    with pytest.raises(ContractError) as e:
        loader(raw)
    assert "upgrade tki-sdk" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("text", ["[1, 2]", "{", '{"format": "tki-gallery"}', ""])
def test_damaged_gallery_manifest_is_one_line(tmp_path, text):
    (tmp_path / "gallery.json").write_text(text)
    with pytest.raises(ContractError) as e:
        GalleryManifest.load(tmp_path)
    assert "rebuild" in str(e.value) and "\n" not in str(e.value)


def test_format2_config_without_the_ablation_records_loads_with_the_old_behaviour():
    raw = CheckpointConfig.load(FIX / "config.json").to_dict()
    for key in ("stage1_losses", "labels", "aggregation"):
        raw.pop(key)
    cfg = CheckpointConfig.from_dict(raw)
    assert cfg.stage1_losses == "both" and cfg.labels == {"strategy": "true"} and cfg.aggregation == {}
    assert CheckpointConfig.from_dict(cfg.to_dict()) == cfg
