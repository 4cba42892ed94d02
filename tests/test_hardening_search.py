"""Hardening of search: ``k`` and ``where`` bounds, NaN / inf queries, control characters in printed metadata.

Each test reproduces a finding of the hostile probe (issue 11): on b391247 ``k`` allocated ~12 bytes per unit of
``k`` whatever the gallery size, 600 ``where`` fields raised ``sqlite3.OperationalError``, NaN queries returned
``nan`` distances, and metadata reached the terminal raw.
"""
from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest

from gallery_keys import random_keys, rows_of
from runtime_fixtures import copy_tree_sample, make_tiny_export, one_error_line, pacs_sample, run_tki
from tki_sdk.runtime.index import gallery as gallery_mod
from tki_sdk.runtime.index import metadata_store
from tki_sdk.runtime.engine.embedder import Embedder
from tki_sdk.runtime.index.gallery import MISSING_KEY, Gallery
from tki_sdk.runtime.pipeline.ingest import gallery_options

D = 16
#: Item i of ``small`` is stored under KEYS[i] (random large uint64s, not row numbers).
KEYS = random_keys(50, seed=31)


@pytest.fixture(scope="module")
def small():
    """Four galleries of 50 random vectors (every storage kind), with metadata."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((50, D)).astype(np.float32)
    meta = [{"class": "a" if i % 2 else "b", "i": i} for i in range(50)]
    out = {}
    for name, kw in {"exact": {"exact": True}, "hnsw": {}, "i8": {"dtype": "i8"}, "f16": {"dtype": "f16"},
                     "hnswlib": {"index": "hnswlib"}}.items():
        g = Gallery(D, **kw)
        g.add(KEYS, x, meta)
        out[name] = g
    return x, out


# ---------------------------------------------------------------------------------------------------- k
def test_k_is_capped_by_gallery_size_and_memory_follows(small):
    x, galleries = small
    q = x[:2] + 0.01
    for name, g in galleries.items():
        ref_k, ref_d = g.search(q, 50)
        tracemalloc.start()
        keys, dist = g.search(q, gallery_mod.MAX_K)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert keys.shape == (2, 50) and dist.shape == (2, 50), name
        np.testing.assert_array_equal(keys, ref_k)
        assert peak < 1 << 20, (name, peak)  # ~12 bytes per unit of k would be 1.2 MB at k = 100,000
        keys, dist = g.search(q, gallery_mod.MAX_K, where={"class": "a"})
        assert keys.shape == (2, 50) and np.all(keys[:, 25:] == MISSING_KEY) and np.all(np.isinf(dist[:, 25:]))
        assert np.all(rows_of(keys[:, :25], KEYS) % 2 == 1), name
        assert sorted(rows_of(ref_k[0], KEYS).tolist()) == list(range(50)), name  # every item once, by its key


def test_k_above_the_documented_maximum_is_refused(small):
    _, galleries = small
    assert "MAX_K" in Gallery.search.__doc__ or str(gallery_mod.MAX_K) in (gallery_mod.__doc__ or "")
    for g in galleries.values():
        with pytest.raises(ValueError, match=f"at most {gallery_mod.MAX_K:,}"):
            g.search(np.ones(D, np.float32), gallery_mod.MAX_K + 1)
        with pytest.raises(ValueError, match="k must be >= 1"):
            g.search(np.ones(D, np.float32), 0)


def test_empty_gallery_returns_no_columns():
    keys, dist = Gallery(D).search(np.ones((3, D), np.float32), 10)
    assert keys.shape == (3, 0) and dist.shape == (3, 0)


# ---------------------------------------------------------------------------------------------------- NaN
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_or_inf_queries_are_refused(small, bad):
    x, galleries = small
    q = x[:3].copy()
    q[1, 5] = bad
    for name, g in galleries.items():
        with pytest.raises(ValueError, match=r"query vector 1 .*(NaN|inf)"):
            g.search(q, 5)
        with pytest.raises(ValueError, match=r"query vector 1 "):
            g.search(q, 5, where={"class": "a"})
        keys, dist = g.search(q[[0, 2]], 5)  # the finite rows still search
        assert np.isfinite(dist).all(), name
        assert rows_of(keys[:, 0], KEYS).tolist() == [0, 2], name  # each query's own item first


# ---------------------------------------------------------------------------------------------------- where
def test_where_bounds_are_clear_value_errors(small):
    _, galleries = small
    g = galleries["exact"]
    too_many_fields = {f"f{i}": "x" for i in range(metadata_store.MAX_WHERE_FIELDS + 1)}
    with pytest.raises(ValueError, match=f"at most {metadata_store.MAX_WHERE_FIELDS} fields"):
        g.search(np.ones(D, np.float32), 5, where=too_many_fields)
    with pytest.raises(ValueError, match=f"at most {metadata_store.MAX_WHERE_VALUES} values"):
        g.search(np.ones(D, np.float32), 5, where={"class": [str(i) for i in range(metadata_store.MAX_WHERE_VALUES + 1)]})
    # at the limits the filter still answers, against a Python reference
    fields = {f"f{i}": "x" for i in range(metadata_store.MAX_WHERE_FIELDS - 1)}
    assert g.match({"class": "a", **fields}).size == 0
    vals = ["a", *[str(i) for i in range(metadata_store.MAX_WHERE_VALUES - 1)]]
    assert sorted(g.match({"class": vals}).tolist()) == sorted(KEYS[1::2].tolist())


# ---------------------------------------------------------------------------------------------------- CLI
@pytest.fixture(scope="module")
def hostile_gallery(tmp_path_factory, pacs_dir):
    """A gallery whose metadata carries newlines and terminal escape sequences, and a query file whose name does."""
    root = tmp_path_factory.mktemp("hostile_meta")
    export, _ = make_tiny_export(root / "export")
    files = copy_tree_sample(pacs_sample(pacs_dir, per_class=1, domains=("photo", "sketch")), pacs_dir, root / "imgs")
    emb = Embedder(export, threads=1)
    res = emb.embed_images(files)
    g = Gallery(**gallery_options(emb, exact=True))
    metas = [{"path": f"evil\n  1. 0.0000  forged/line\x1b[2J{i}.jpg", "domain": "ph\x1b]0;title\x07oto",
              "class": "dog\r\nhorse"} for i in range(len(res.indices))]
    g.add(random_keys(len(files), seed=32)[res.indices], res.embeddings, metas)
    g.save(root / "g")
    query = root / "q\nx\x1b[31m.jpg"
    query.write_bytes(files[0].read_bytes())
    return root, export, root / "g", query


def _no_control_chars(text: str) -> None:
    for line in text.splitlines():
        assert line.isprintable(), repr(line)


def test_search_and_info_escape_control_characters(hostile_gallery, capsys):
    root, export, g, query = hostile_gallery
    rc, out, err = run_tki(["search", "--gallery", g, "--model", export, "--image", query, "-k", 3], capsys)
    assert rc == 0, err
    _no_control_chars(out)
    lines = out.splitlines()
    assert len(lines) == 4, lines  # the query line and three hits: nothing forged
    assert "\\n" in lines[0] and "\\x1b" in lines[0]
    assert all("\\n  1. 0.0000  forged/line\\x1b[2J" in ln and "[ph\\x1b]0;title\\x07oto/dog\\r\\nhorse]" in ln
               for ln in lines[1:])
    rc, out, _ = run_tki(["search", "--gallery", g, "--model", export, "--image", query, "-k", 2, "--json"], capsys)
    assert rc == 0 and len(out.splitlines()) == 1
    doc = json.loads(out)
    assert doc["hits"][0]["path"].startswith("evil\n")  # JSON keeps the value, escaped by the encoder
    _no_control_chars(out)
    rc, out, err = run_tki(["info", g], capsys)
    assert rc == 0, err
    _no_control_chars(out)
    assert "ph\\x1b]0;title\\x07oto" in out and "dog\\r\\nhorse" in out


def test_error_lines_stay_one_line_whatever_the_filename(hostile_gallery, capsys):
    root, export, g, query = hostile_gallery
    missing = root / "no\nsuch\x1b[1m.jpg"
    rc, _, err = run_tki(["search", "--gallery", g, "--model", export, "--image", missing], capsys)
    assert rc == 2
    assert "no\\nsuch\\x1b[1m.jpg" in one_error_line(err, "tki search")
    bad = root / "bad\nname.jpg"
    bad.write_bytes(b"not an image")
    rc, out, err = run_tki(["search", "--gallery", g, "--model", export, "--image", bad, query], capsys)
    assert rc == 0
    skipped = [ln for ln in err.splitlines() if "skipped" in ln]
    assert len(skipped) == 1 and "bad\\nname.jpg" in skipped[0] and "not an image" in skipped[0], err
    _no_control_chars(err)


def test_cli_k_and_where_extremes_are_one_line(hostile_gallery, capsys):
    root, export, g, query = hostile_gallery
    rc, out, err = run_tki(["search", "--gallery", g, "--model", export, "--image", query, "-k", 1_000_000_000], capsys)
    assert rc == 2 and f"at most {gallery_mod.MAX_K:,}" in one_error_line(err, "tki search")
    rc, out, err = run_tki(["search", "--gallery", g, "--model", export, "--image", query, "-k", gallery_mod.MAX_K,
                        "--json"], capsys)
    assert rc == 0, err
    n = len(Gallery.load(g))
    assert len(json.loads(out)["hits"]) == n
    where = [a for i in range(600) for a in ("--where", f"f{i}=x")]
    rc, out, err = run_tki(["search", "--gallery", g, "--model", export, "--image", query, *where], capsys)
    assert rc == 2 and "where" in one_error_line(err, "tki search")
