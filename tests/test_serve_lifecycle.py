"""tki serve over time: a new gallery version saved under load is picked up without losing a request; a
version from another model is refused while the old one keeps serving; a real uvicorn process drains its
in-flight requests on SIGTERM and exits 0."""
from __future__ import annotations

import asyncio
import signal
import threading
import time

import numpy as np
import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import make_tiny_export, pacs_sample  # noqa: E402
from serve_fixtures import (  # noqa: E402
    SERVE_CLASSES, asgi_client, build_gallery, free_port, metric_value, uvicorn_process,
)
from tki_sdk.runtime import Embedder, Gallery  # noqa: E402
from tki_sdk.serve import ServeConfig  # noqa: E402


@pytest.fixture()
def setup(tmp_path, pacs_dir):
    model, _ = make_tiny_export(tmp_path / "export")
    files = pacs_sample(pacs_dir, per_class=3, classes=SERVE_CLASSES)
    gallery = build_gallery(model, files, pacs_dir, tmp_path / "gallery", exact=True)
    emb = Embedder(model, threads=1)
    queries = pacs_sample(pacs_dir, per_class=1, classes=("giraffe", "elephant"))
    qvecs = emb.embed_images(queries).embeddings
    return {"model": model, "gallery": gallery, "files": files, "qvecs": qvecs, "queries": queries,
            "tmp": tmp_path, "pacs": pacs_dir}


def test_gallery_saved_under_load_is_swapped_in_without_losing_a_request(setup):
    s = setup
    v1 = (s["gallery"] / "CURRENT").read_text().strip()
    removed = set(range(0, len(s["files"]), 2))  # the new version drops every second item
    saved = threading.Event()

    def save_new_version():
        g = Gallery.load(s["gallery"])
        g.remove(sorted(removed))
        g.save(s["gallery"])  # what tki embed does: a new version, then CURRENT swapped
        saved.set()

    async def worker(c, qi, log):
        n_after = 0
        while n_after < 15:
            r = await c.post("/v1/search", json={"vectors": s["qvecs"][qi % len(s["qvecs"])].tolist(), "k": 10})
            log.append((qi, r.status_code, r.json()))
            if r.status_code == 200 and r.json()["gallery_version"] != v1:
                n_after += 1
            qi += 1
            await asyncio.sleep(0.002)

    async def main():
        cfg = ServeConfig(model=s["model"], gallery=s["gallery"], reload_interval_s=0.05, max_wait_ms=2)
        log: list = []
        async with asgi_client(cfg) as (_, c):
            tasks = [asyncio.create_task(worker(c, i, log)) for i in range(6)]
            while len(log) < 40:
                await asyncio.sleep(0.01)
            await asyncio.get_running_loop().run_in_executor(None, save_new_version)
            await asyncio.wait_for(asyncio.gather(*tasks), 60)
            metrics = (await c.get("/metrics")).text
            info = (await c.get("/v1/info")).json()
        return log, metrics, info

    log, metrics, info = asyncio.run(main())
    assert saved.is_set()
    assert all(status == 200 for _, status, _ in log), [b for _, st, b in log if st != 200][:3]
    v2 = (s["gallery"] / "CURRENT").read_text().strip()
    assert v2 != v1
    versions = [b["gallery_version"] for _, _, b in log]
    assert set(versions) == {v1, v2} and versions.count(v1) >= 40
    new_gallery = Gallery.load(s["gallery"])
    old_gallery_keys = set(range(len(s["files"])))
    for qi, _, body in log:
        q = s["qvecs"][qi % len(s["qvecs"])]
        keys = body["results"][0]["keys"]
        if body["gallery_version"] == v2:
            assert not removed & set(keys)
            ref_keys, _ = new_gallery.search(q, 10)
            assert keys == [int(k) for k in ref_keys[0]]
        else:
            assert set(keys) <= old_gallery_keys and len(keys) == 10
    assert metric_value(metrics, "tki_gallery_reloads_total") == 1
    assert metric_value(metrics, "tki_gallery_version_info", {"version": v2}) == 1
    assert metric_value(metrics, "tki_gallery_items") == len(s["files"]) - len(removed)
    assert info["gallery"]["version"] == v2 and info["gallery"]["items"] == len(s["files"]) - len(removed)


def test_version_from_another_model_is_refused_and_the_old_one_keeps_serving(setup):
    s = setup
    v1 = (s["gallery"] / "CURRENT").read_text().strip()
    other, _ = make_tiny_export(s["tmp"] / "other", seed=3)
    o = Embedder(other, threads=1)
    g = Gallery(o.embedding_dim, model_fingerprint=o.model_fingerprint)
    g.add(np.arange(4, dtype=np.uint64), o.embed_images(s["files"][:4]).embeddings, [{"domain": "x"}] * 4)

    async def main():
        cfg = ServeConfig(model=s["model"], gallery=s["gallery"], reload_interval_s=0.05)
        async with asgi_client(cfg) as (_, c):
            g.save(s["gallery"])
            deadline = time.monotonic() + 20
            while metric_value((await c.get("/metrics")).text, "tki_gallery_reload_failures_total") < 1:
                assert time.monotonic() < deadline, "the bad version was never looked at"
                await asyncio.sleep(0.05)
            r = await c.post("/v1/search", json={"vectors": s["qvecs"][0].tolist(), "k": 3})
            await asyncio.sleep(0.3)  # more checks of the same bad version must not count again
            metrics = (await c.get("/metrics")).text
        return r, metrics

    r, metrics = asyncio.run(main())
    assert r.status_code == 200 and r.json()["gallery_version"] == v1
    assert metric_value(metrics, "tki_gallery_reload_failures_total") == 1
    assert metric_value(metrics, "tki_gallery_reloads_total") == 0


def test_real_uvicorn_drains_in_flight_requests_on_sigterm_and_exits_0(setup):
    s = setup
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--model", str(s["model"]), "--gallery", str(s["gallery"]), "--max-batch", "64",
            "--max-wait-ms", "1500", "--fixed-wait", "--reload-interval", "0"]
    with uvicorn_process(args, port) as proc:
        results: list = [None] * 6

        def ask(i):
            try:
                r = httpx.post(f"{base}/v1/search", files=[("image", (s["queries"][i % 2].name,
                                                                       s["queries"][i % 2].read_bytes()))],
                               data={"k": "4"}, timeout=30)
                results[i] = (r.status_code, r.json())
            except httpx.HTTPError as e:
                results[i] = ("error", repr(e))

        threads = [threading.Thread(target=ask, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 20
        while metric_value(httpx.get(f"{base}/metrics").text, "tki_requests_in_flight") < 6:
            assert time.monotonic() < deadline, "requests never reached the server"
            time.sleep(0.02)
        proc.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        time.sleep(0.3)
        with pytest.raises(httpx.ConnectError):  # no longer accepting
            httpx.get(f"{base}/healthz", timeout=2)
        for t in threads:
            t.join(30)
        code = proc.wait(30)
        drained_s = time.monotonic() - t_term
    assert code == 0
    assert all(r is not None and r[0] == 200 for r in results), results
    assert all(len(r[1]["results"][0]["keys"]) == 4 for r in results)
    assert max(r[1]["batch_queries"] for r in results) > 1
    assert drained_s < 20
