"""``tki embed --index``: the backend of a new gallery, recorded in gallery.json and searched by ``tki search``;
a storage the backend lacks is one line, exit 2."""
from __future__ import annotations

import pytest
from runtime_fixtures import copy_tree_sample, make_tiny_export, one_error_line, pacs_sample, run_tki

from tki_sdk.common.errors import EXIT_USAGE
from tki_sdk.runtime.index.gallery import Gallery


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pacs_dir):
    root = tmp_path_factory.mktemp("backend-cli")
    export, _ = make_tiny_export(root / "export")
    files = copy_tree_sample(pacs_sample(pacs_dir, per_class=2), pacs_dir, root / "imgs")
    return root, export, files


@pytest.mark.parametrize("index", ["hnswlib", "faiss"])
def test_embed_with_a_float32_backend_then_search(setup, capsys, index):
    root, export, files = setup
    out_dir = root / f"g-{index}"
    rc, out, err = run_tki(["embed", "--model", export, "--images", root / "imgs", "--out", out_dir,
                            "--index", index, "--workers", 1], capsys)
    assert rc == 0, err
    info = Gallery.read_info(out_dir)
    assert info["index"] == {"backend": index, "metric": "ip"} and info["count"] == len(files)
    g = Gallery.load(out_dir)
    assert g.index == index and len(g) == len(files)
    assert g.connectivity == (30 if index == "faiss" else 16)  # each backend's default M (IndexConfig.for_backend)
    rc, out, err = run_tki(["search", "--gallery", out_dir, "--model", export, "--image", files[0], "-k", 3],
                           capsys)
    assert rc == 0, err
    assert files[0].name in out  # the image finds itself


def test_embed_refuses_a_storage_the_backend_lacks(setup, capsys):
    root, export, _ = setup
    rc, out, err = run_tki(["embed", "--model", export, "--images", root / "imgs", "--out", root / "g8",
                            "--index", "hnswlib", "--dtype", "i8", "--workers", 1], capsys)
    assert rc == EXIT_USAGE, (rc, err)
    assert "hnswlib stores float32 only" in one_error_line(err, "tki embed", ignore_model_line=True)
