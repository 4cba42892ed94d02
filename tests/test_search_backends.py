"""Graph backends behind the Gallery (usearch, hnswlib, faiss): exact agreement with numpy brute force on small
galleries, the graph metric recorded and honoured on load (old galleries keep ``cos``), tombstones through
save / load, refusals in one line, and searches from several threads running together (readers-writer lock)."""
from __future__ import annotations

import json
import threading

import numpy as np
import pytest

from tki_sdk.runtime.index import poincare
from tki_sdk.runtime.index.backends import BACKENDS
from tki_sdk.runtime.index.build import add_tuned
from tki_sdk.runtime.index.gallery import Gallery
from tki_sdk.runtime.index.rwlock import ReadWriteLock
from tki_sdk.runtime.index.store import read_current


def _brute(x: np.ndarray, q: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """float64 brute force: rows [Q, k] and distances in the gallery's metric."""
    x64, q64 = x.astype(np.float64), q.astype(np.float64)
    if metric == "cos":
        x64 = x64 / np.linalg.norm(x64, axis=1, keepdims=True)
        q64 = q64 / np.linalg.norm(q64, axis=1, keepdims=True)
    if metric == "l2sq":
        dist = ((q64[:, None, :] - x64[None]) ** 2).sum(-1)
    else:
        dist = 1.0 - q64 @ x64.T
    order = np.argsort(dist, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(dist, order, 1)


@pytest.mark.parametrize("index", BACKENDS)
@pytest.mark.parametrize("metric", ["cos", "ip", "l2sq"])
def test_small_graphs_agree_with_brute_force(index, metric):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((400, 24)).astype(np.float32)
    q = rng.standard_normal((50, 24)).astype(np.float32)
    keys = np.arange(1000, 1400, dtype=np.uint64) * 7919  # not row numbers
    g = Gallery(24, metric=metric, index=index, expansion_search=400)
    g.add(keys, x)
    found, dist = g.search(q, 10)
    rows, tdist = _brute(x, q, 10, metric)
    np.testing.assert_array_equal(found, keys[rows])
    np.testing.assert_allclose(dist, tdist, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("index", BACKENDS)
def test_new_cos_graphs_use_inner_product_and_old_ones_load_as_built(index, tmp_path):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    g = Gallery(16, index=index)
    g.add(np.arange(300), x)
    assert g.graph_metric == "ip" and g._index.metric == "ip"
    g.save(tmp_path / "new")
    assert Gallery.read_info(tmp_path / "new")["index"] == {"backend": index, "metric": "ip"}
    assert Gallery.load(tmp_path / "new")._index.metric == "ip"


def test_only_f32_cos_graphs_switch_to_inner_product():
    assert Gallery(8).graph_metric == "ip"
    assert Gallery(8, dtype="f16").graph_metric == "cos" and Gallery(8, dtype="i8").graph_metric == "cos"
    assert Gallery(8, metric="l2sq").graph_metric == "l2sq"
    assert Gallery(8, metric="poincare", curvature=1.0).graph_metric == "l2sq"


def test_a_gallery_saved_before_backends_loads_its_cos_graph_as_cos(tmp_path):
    """Before backends, usearch graphs of cos galleries were built with usearch's cos metric and gallery.json
    had no 'index': such a gallery must load with a cos graph (usearch uses the metric it is constructed with)."""
    from usearch.index import MetricKind

    rng = np.random.default_rng(5)
    x = rng.standard_normal((300, 16)).astype(np.float32)
    q = rng.standard_normal((20, 16)).astype(np.float32)
    old = Gallery(16, index="usearch")  # galleries saved before backends were usearch graphs
    old.graph_metric = "cos"  # what the code before backends built
    old._index = old._new_index()
    old.add(np.arange(300), x)
    old.save(tmp_path / "old")
    d = read_current(tmp_path / "old")
    doc = json.loads((d / "gallery.json").read_text())
    del doc["index"]
    (d / "gallery.json").write_text(json.dumps(doc))
    for loaded in (Gallery.load(tmp_path / "old", verify="sha256"), Gallery.view(tmp_path / "old")):
        assert loaded.index == "usearch" and loaded.graph_metric == "cos"
        assert loaded._index._index.metric_kind == MetricKind.Cos
        np.testing.assert_array_equal(loaded.search(q, 5)[0], old.search(q, 5)[0])
    loaded = Gallery.load(tmp_path / "old")
    loaded.add([1000], x[:1])  # still writable; saved again it keeps recording cos
    loaded.save(tmp_path / "old")
    assert Gallery.read_info(tmp_path / "old")["index"] == {"backend": "usearch", "metric": "cos"}


@pytest.mark.parametrize("index", BACKENDS)
def test_removal_survives_save_and_load_and_removed_keys_can_return(index, tmp_path):
    rng = np.random.default_rng(6)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    keys = np.arange(500, dtype=np.uint64) + 2**40
    g = Gallery(16, index=index, expansion_search=500)
    g.add(keys, x, [{"i": i} for i in range(500)])
    gone = keys[:100]
    assert g.remove(gone) == 100
    g.save(tmp_path / "g")
    for h in (Gallery.load(tmp_path / "g"), Gallery.view(tmp_path / "g")):
        assert len(h) == 400 and not h.contains(gone).any() and h.contains(keys[100:]).all()
        assert np.array_equal(np.sort(h.keys()), keys[100:])
        found, _ = h.search(x[:100], 10)
        assert not np.isin(found, gone).any()
    h = Gallery.load(tmp_path / "g")
    h.add(gone[:50], x[:50] * -1.0)  # back, with new vectors
    y = rng.standard_normal((10, 16)).astype(np.float32)
    h.add(np.arange(10, dtype=np.uint64), y)  # and new keys take the tombstones' slots
    assert len(h) == 460
    found, dist = h.search(-x[:50], 1)
    np.testing.assert_array_equal(found[:, 0], gone[:50])
    np.testing.assert_allclose(h.get_vectors(gone[:3]), -x[:3] / np.linalg.norm(x[:3], axis=1, keepdims=True),
                               atol=1e-6)
    # exact agreement after the churn (ef covers the whole graph)
    live = np.concatenate([gone[:50], keys[100:], np.arange(10, dtype=np.uint64)])
    vecs = np.concatenate([-x[:50], x[100:], y])
    rows, _ = _brute(vecs, x[200:220], 10, "cos")
    found, _ = h.search(x[200:220], 10)
    np.testing.assert_array_equal(found, live[rows])


@pytest.mark.parametrize("index", ["hnswlib", "faiss"])
def test_float32_backends_refuse_quantised_storage_in_one_line(index):
    for dtype in ("f16", "i8"):
        with pytest.raises(ValueError, match=f"index {index} stores float32 only") as e:
            Gallery(8, index=index, dtype=dtype)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="index 'annoy' unknown; use one of usearch, hnswlib, faiss"):
        Gallery(8, index="annoy")


@pytest.mark.parametrize("index", ["hnswlib", "faiss"])
def test_float32_backends_poincare_reranks_to_the_exact_top_k(index):
    rng = np.random.default_rng(8)
    x = (0.3 * rng.standard_normal((300, 8)) / np.sqrt(8)).astype(np.float32)
    q = (0.3 * rng.standard_normal((20, 8)) / np.sqrt(8)).astype(np.float32)
    g = Gallery(8, metric="poincare", curvature=1.0, index=index, expansion_search=300)
    g.add(np.arange(300), x)
    found, dist = g.search(q, 5)
    truth = poincare.distance(q, x, 1.0)
    order = np.argsort(truth, axis=1, kind="stable")[:, :5]
    np.testing.assert_array_equal(found, order)
    np.testing.assert_allclose(dist, np.take_along_axis(truth, order, 1), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("index", ["hnswlib", "faiss"])
def test_float32_backends_self_tuning_reaches_the_target(index):
    rng = np.random.default_rng(9)
    c = rng.standard_normal((20, 32)).astype(np.float32)
    x = (c[rng.integers(0, 20, 4000)] + 0.5 * rng.standard_normal((4000, 32))).astype(np.float32)
    g = Gallery(32, index=index)
    res = add_tuned(g, None, x, target_recall=0.98, holdout=200)
    assert res is not None and res.reached and g.expansion_search == res.expansion_search
    assert g.tuned["expansion_search"] == g._index.expansion_search


# ------------------------------------------------------------------------------------------ concurrency
def test_read_write_lock_lets_readers_share_and_keeps_writers_alone():
    lock = ReadWriteLock()
    both_in = threading.Barrier(2, timeout=10)  # passes only when two readers are inside together
    writer_saw_reader = []
    reading = threading.Event()
    release = threading.Event()

    def reader() -> None:
        with lock.shared():
            both_in.wait()

    ts = [threading.Thread(target=reader) for _ in range(2)]
    [t.start() for t in ts]
    [t.join() for t in ts]

    def long_reader() -> None:
        with lock.shared():
            reading.set()
            release.wait(10)

    def writer() -> None:
        with lock:
            writer_saw_reader.append(not release.is_set())

    r = threading.Thread(target=long_reader)
    r.start()
    reading.wait(10)
    w = threading.Thread(target=writer)
    w.start()
    w.join(0.2)
    assert w.is_alive()  # the writer waits for the reader
    release.set()
    w.join(10)
    r.join(10)
    assert writer_saw_reader == [False]
    with lock:  # re-entrant for the writer, who may also read
        with lock:
            with lock.shared():
                pass


def _gallery(index: str, n: int = 20_000, d: int = 128) -> tuple[Gallery, np.ndarray]:
    rng = np.random.default_rng(10)
    x = rng.standard_normal((n, d)).astype(np.float32)
    g = Gallery(d, index=index, threads=1, expansion_search=128)
    g.add(np.arange(n), x)
    return g, rng.standard_normal((400, d)).astype(np.float32)


@pytest.mark.parametrize("index", [b for b in BACKENDS if b != "usearch"])
def test_two_searches_are_inside_the_graph_at_once(index):
    """Deterministic: each search waits inside the graph for the other; a single lock would deadlock them."""
    g, q = _gallery(index, n=2000, d=16)
    both_in = threading.Barrier(2, timeout=10)
    inner = g._index.search

    def search(queries, k, threads):
        both_in.wait()
        return inner(queries, k, threads)

    g._index.search = search
    errors: list[BaseException] = []

    def run() -> None:
        try:
            g.search(q[:5], 5)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    ts = [threading.Thread(target=run) for _ in range(2)]
    [t.start() for t in ts]
    [t.join(30) for t in ts]
    assert not errors, errors


@pytest.mark.parametrize("index", BACKENDS)
def test_concurrent_searches_equal_serial(index):
    """Eight threads searching one gallery at once get exactly the serial answer. Whether they overlap inside
    the graph is shown without a clock by ``test_two_searches_are_inside_the_graph_at_once``; the
    speed-up itself is measured by ``tki-bench``, not asserted here."""
    g, q = _gallery(index, n=5000, d=64)
    q = q[:100]  # usearch takes the GIL back between queries: eight threads of 400 queries took 20 s
    serial = [g.search(q, 10) for _ in range(2)]
    np.testing.assert_array_equal(serial[0][0], serial[1][0])
    results: list = [None] * 8
    start = threading.Barrier(8, timeout=60)

    def run(i: int) -> None:
        start.wait()
        results[i] = g.search(q, 10)

    ts = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    [t.start() for t in ts]
    [t.join(120) for t in ts]
    for keys, dist in results:
        np.testing.assert_array_equal(keys, serial[0][0])
        np.testing.assert_array_equal(dist, serial[0][1])


@pytest.mark.parametrize("index", ["hnswlib", "faiss"])
def test_parallel_backends_release_the_gil_while_searching(index):
    """While one thread searches the graph, another thread runs Python: a search holding the GIL would stop
    it for the whole search (a few thousand loop turns at most, before and after the native call)."""
    g, q = _gallery(index, n=5000, d=128)
    q = np.concatenate([q] * 8)
    turns = 0
    t = threading.Thread(target=lambda: g.search(q, 10))
    t.start()
    while t.is_alive():
        turns += 1
    t.join()
    assert turns > 200_000, turns




# ------------------------------------------------------------------------------------------ faiss tombstones
def test_faiss_compacts_when_removed_items_outnumber_live_ones(tmp_path):
    """FAISS's HNSW cannot delete: removed slots stay in the graph (never returned) until they outnumber the
    live ones; the next add rebuilds from the live vectors. Answers equal brute force before and after."""
    rng = np.random.default_rng(11)
    n, d = 3000, 16
    x = rng.standard_normal((n, d)).astype(np.float32)
    keys = rng.permutation(n).astype(np.uint64) * np.uint64(7919) + np.uint64(2**63 + 12345)  # keys above 2**63
    g = Gallery(d, index="faiss", expansion_search=n)
    g.add(keys, x)
    g.remove(keys[: 2 * n // 3])
    assert g._index.dead_slots == 2 * n // 3 and len(g) == n - 2 * n // 3
    live_x, live_k = x[2 * n // 3 :], keys[2 * n // 3 :]
    rows, _ = _brute(live_x, x[:40], 10, "cos")
    found, _ = g.search(x[:40], 10)
    np.testing.assert_array_equal(found, live_k[rows])  # tombstones are never answered
    y = rng.standard_normal((5, d)).astype(np.float32)
    g.add(keys[:5], y)  # removed keys come back: the add compacts first
    assert g._index.dead_slots == 0 and g._index._index.ntotal == n - 2 * n // 3 + 5
    all_x, all_k = np.concatenate([live_x, y]), np.concatenate([live_k, keys[:5]])
    rows, _ = _brute(all_x, x[:40], 10, "cos")
    g.save(tmp_path / "g")
    for h in (g, Gallery.load(tmp_path / "g"), Gallery.view(tmp_path / "g")):
        h.expansion_search = n
        found, _ = h.search(x[:40], 10)
        np.testing.assert_array_equal(found, all_k[rows])
        np.testing.assert_allclose(h.get_vectors(keys[:5]), y / np.linalg.norm(y, axis=1, keepdims=True), atol=1e-6)


def test_faiss_slot_file_that_disagrees_with_the_graph_is_refused(tmp_path):
    from tki_sdk.runtime.index.backends.faiss_graph import SLOTS_SIDE_FILE
    from tki_sdk.runtime.index.store import GalleryDamagedError

    rng = np.random.default_rng(12)
    g = Gallery(8, index="faiss")
    g.add(np.arange(50), rng.standard_normal((50, 8)).astype(np.float32))
    g.save(tmp_path / "g")
    slots = read_current(tmp_path / "g") / SLOTS_SIDE_FILE
    np.save(slots, np.arange(49, dtype=np.uint64))  # one slot short; a gallery saved without checksums
    manifest = read_current(tmp_path / "g") / "gallery.json"
    info = json.loads(manifest.read_text())
    info.pop("files", None)
    manifest.write_text(json.dumps(info))
    with pytest.raises(GalleryDamagedError, match="index.faiss") as e:
        Gallery.load(tmp_path / "g")
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ node order
def _queue_bfs(links: np.ndarray, start: int) -> list[int]:
    """Textbook breadth-first search with a queue (the reference)."""
    from collections import deque

    n = len(links)
    seen, order = [False] * n, []
    for root in [start] + list(range(n)):
        if seen[root]:
            continue
        seen[root] = True
        todo = deque([root])
        while todo:
            v = todo.popleft()
            order.append(v)
            for u in links[v]:
                if u >= 0 and not seen[u]:
                    seen[u] = True
                    todo.append(int(u))
    return order


@pytest.mark.parametrize("seed", range(5))
def test_bfs_order_equals_a_queue_based_search(seed):
    from tki_sdk.runtime.index.backends.graph_order import bfs_order

    rng = np.random.default_rng(seed)
    n = 400
    links = rng.integers(-1, n, size=(n, 6))  # -1: empty slots; some nodes unreachable
    links[rng.random(n) < 0.2] = -1
    start = int(rng.integers(n))
    perm = bfs_order(links, start)
    assert perm.tolist() == _queue_bfs(links, start)
    assert np.array_equal(np.sort(perm), np.arange(n))


def test_faiss_renumbered_graph_answers_as_brute_force(tmp_path):
    """Past REORDER_FROM nodes the FAISS graph's slots are renumbered breadth-first; keys, vectors, removals
    and answers are unchanged (ef covering the whole graph: exact agreement)."""
    from tki_sdk.runtime.index.backends.faiss_graph import REORDER_FROM

    rng = np.random.default_rng(13)
    n, d = REORDER_FROM + 3000, 8
    x = rng.standard_normal((n, d)).astype(np.float32)
    keys = rng.permutation(n).astype(np.uint64) * np.uint64(5) + np.uint64(2**63 + 1)
    g = Gallery(d, index="faiss", expansion_search=n, threads=2)
    g.add(keys[:1000], x[:1000])
    g.add(keys[1000:], x[1000:])
    assert g._index._ordered == n
    assert not np.array_equal(g._index._slots, keys)  # the slots did move
    gone = keys[::7]
    g.remove(gone)
    live = np.ones(n, dtype=bool)
    live[::7] = False
    q = rng.standard_normal((30, d)).astype(np.float32)
    rows, _ = _brute(x[live], q, 10, "cos")
    g.save(tmp_path / "g")
    for h in (g, Gallery.load(tmp_path / "g")):
        h.expansion_search = n
        found, _ = h.search(q, 10)
        np.testing.assert_array_equal(found, keys[live][rows])
        np.testing.assert_allclose(h.get_vectors(keys[1:4]), x[1:4] / np.linalg.norm(x[1:4], axis=1, keepdims=True),
                                   atol=1e-6)


def test_faiss_sets_its_threads_for_every_call():
    """OpenMP keeps a thread count per calling thread: a one-query search (one thread: a team would spin on
    the cores its caller needs) must not leave a later batch or insert on one thread."""
    import faiss

    from tki_sdk.common.cpu import usable_cpus

    rng = np.random.default_rng(14)
    x = rng.standard_normal((200, 8)).astype(np.float32)
    g = Gallery(8, index="faiss")  # threads=0: every usable CPU
    g.add(np.arange(100), x[:100])
    g.search(x[0], 5)
    assert faiss.omp_get_max_threads() == 1
    g.search(x[:50], 5)
    assert faiss.omp_get_max_threads() == min(50, usable_cpus())
    g.search(x[0], 5)
    g._index.add(np.arange(100, 200, dtype=np.uint64), x[100:], 0)  # (the gallery inserts into small graphs
    assert faiss.omp_get_max_threads() == usable_cpus()              # on one thread: SERIAL_ADD_BELOW)


def test_default_faiss_gallery_holds_no_more_than_faiss_hnsw32():
    """The default faiss gallery's graph, vectors and slot keys take no more bytes than FAISS's own
    ``IndexHNSWFlat`` at M 32 (its serialised size) on the same vectors: the memory goal of the search suite."""
    faiss = pytest.importorskip("faiss")
    rng = np.random.default_rng(9)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    g = Gallery(32, index="faiss", expansion_add=40)
    g.add(np.arange(x.shape[0]), x)
    ref = faiss.IndexHNSWFlat(32, 32, faiss.METRIC_INNER_PRODUCT)
    ref.hnsw.efConstruction = 40
    ref.add(x)
    ref_bytes = faiss.serialize_index(ref).size
    ours = g._index.serialized_bytes()
    assert ours <= ref_bytes, (ours, ref_bytes, g.connectivity)
    # and the count is FAISS's: the gallery's graph file is what serialized_bytes says, to within its header
    assert abs(faiss.serialize_index(g._index._index).size + 8 * len(g) - ours) < 1024
