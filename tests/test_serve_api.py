"""tki serve through an in-process ASGI client: answers equal a numpy brute-force reference, concurrent
queries are batched and answer exactly as serial ones, overload gives 503 and recovers, hostile input gets
one-line 4xx and the service keeps serving, API keys and CORS, thumbnails only for gallery keys."""
from __future__ import annotations

import asyncio
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from runtime_fixtures import build_hostile_folder, make_tiny_export, pacs_sample  # noqa: E402
from serve_fixtures import SERVE_CLASSES, asgi_client, build_gallery, metric_value  # noqa: E402
from tki_sdk.runtime import Embedder  # noqa: E402
from tki_sdk.serve import ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pacs_dir):
    root = tmp_path_factory.mktemp("serve_api")
    model, _ = make_tiny_export(root / "export")
    files = pacs_sample(pacs_dir, per_class=3, classes=SERVE_CLASSES)
    gallery = build_gallery(model, files, pacs_dir, root / "gallery", exact=True)
    emb = Embedder(model, threads=1)
    vecs = emb.embed_images(files).embeddings.astype(np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    domains = [f.relative_to(pacs_dir).parts[0] for f in files]
    queries = pacs_sample(pacs_dir, per_class=1, classes=("giraffe", "elephant", "dog"))  # mostly not in the gallery
    return {"model": model, "gallery": gallery, "files": files, "emb": emb, "vecs": vecs, "domains": domains,
            "queries": queries, "root": root, "pacs": pacs_dir}


def config(s, **kw) -> ServeConfig:
    return ServeConfig(model=s["model"], gallery=s["gallery"], reload_interval_s=0, **kw)


def brute_force(s, query_vec: np.ndarray, k: int, domain: str | None = None) -> tuple[list[int], np.ndarray]:
    q = query_vec.astype(np.float64) / np.linalg.norm(query_vec)
    dist = 1.0 - s["vecs"] @ q
    idx = [i for i in np.argsort(dist, kind="stable") if domain is None or s["domains"][i] == domain]
    return [int(i) for i in idx[:k]], dist[idx[:k]]


def image_part(path: Path, field: str = "image") -> tuple[str, tuple[str, bytes]]:
    return (field, (path.name, path.read_bytes()))


def run(coro):
    return asyncio.run(coro)


def test_search_by_image_and_by_vector_equal_numpy_brute_force(setup):
    s = setup

    async def main():
        async with asgi_client(config(s)) as (_, c):
            for q in s["queries"][:4]:
                ref_vec = s["emb"].embed_images([q]).embeddings[0]
                for domain in (None, "sketch", "photo"):
                    data = {"k": "7"} | ({"where": json.dumps({"domain": domain})} if domain else {})
                    r = await c.post("/v1/search", files=[image_part(q)], data=data)
                    assert r.status_code == 200, r.text
                    body = r.json()
                    keys, dist = brute_force(s, ref_vec, 7, domain)
                    hit = body["results"][0]
                    assert hit["keys"] == keys
                    np.testing.assert_allclose(hit["distances"], dist, atol=2e-5)
                    assert all("path" not in m for m in hit["metadata"])  # server paths stay private
                    assert [m["domain"] for m in hit["metadata"]] == [s["domains"][i] for i in keys]
                    assert body["gallery_version"] == (s["gallery"] / "CURRENT").read_text().strip()
                r = await c.post("/v1/search", json={"vectors": ref_vec.tolist(), "k": 5, "where": {"class": ["dog", "horse"]}})
                assert r.status_code == 200, r.text
                keep = [i for i in range(len(s["files"])) if s["files"][i].parent.name in ("dog", "horse")]
                q64 = ref_vec / np.linalg.norm(ref_vec)
                d = 1 - s["vecs"][keep] @ q64
                assert r.json()["results"][0]["keys"] == [keep[i] for i in np.argsort(d, kind="stable")[:5]]
            # several images in one request: one result row each, in order
            r = await c.post("/v1/search", files=[image_part(q) for q in s["queries"][:3]], data={"k": "3"})
            rows = r.json()["results"]
            assert len(rows) == 3
            for q, row in zip(s["queries"][:3], rows):
                assert row["keys"] == brute_force(s, s["emb"].embed_images([q]).embeddings[0], 3)[0]
            # k larger than the gallery: every item once
            r = await c.post("/v1/search", files=[image_part(s["queries"][0])], data={"k": "1000"})
            assert sorted(r.json()["results"][0]["keys"]) == list(range(len(s["files"])))

    run(main())


def test_embed_equals_runtime_embedder(setup):
    s = setup

    async def main():
        async with asgi_client(config(s)) as (_, c):
            r = await c.post("/v1/embed", files=[image_part(q) for q in s["queries"][:3]])
            assert r.status_code == 200, r.text
            got = np.asarray(r.json()["embeddings"], dtype=np.float32)
            np.testing.assert_allclose(got, s["emb"].embed_images(s["queries"][:3]).embeddings, atol=1e-6)
            assert r.json()["model_fingerprint"] == s["emb"].model_fingerprint

    run(main())


def test_32_concurrent_searches_equal_32_serial_and_are_batched(setup):
    s = setup
    queries = (s["queries"] * 8)[:32]
    domains = [None, "sketch", "photo", "cartoon"]
    params = [(q, 3 + i % 4, domains[i % 4]) for i, q in enumerate(queries)]

    async def one(c, q, k, domain):
        data = {"k": str(k)} | ({"where": json.dumps({"domain": domain})} if domain else {})
        r = await c.post("/v1/search", files=[image_part(q)], data=data)
        assert r.status_code == 200, r.text
        return r.json()

    async def main():
        async def settled(c, queries: int) -> str:
            # a batch is counted just after its answers are sent: wait (bounded) until it has been
            for _ in range(100):
                text = (await c.get("/metrics")).text
                if metric_value(text, "tki_inference_batch_size_sum") >= queries:
                    break
                await asyncio.sleep(0.02)
            return text

        async with asgi_client(config(s, max_batch=32, max_wait_ms=100)) as (_, c):
            serial = [await one(c, *p) for p in params]
            before = await settled(c, 32)
            concurrent = await asyncio.gather(*(one(c, *p) for p in params))
            after = await settled(c, 64)
        return serial, concurrent, before, after

    serial, concurrent, before, after = run(main())
    for a, b in zip(serial, concurrent):
        assert a["results"][0]["keys"] == b["results"][0]["keys"]
        np.testing.assert_allclose(a["results"][0]["distances"], b["results"][0]["distances"], atol=1e-5)
    assert max(b["batch_queries"] for b in concurrent) > 1
    batches = metric_value(after, "tki_inference_batch_size_count") - metric_value(before, "tki_inference_batch_size_count")
    of_one = (metric_value(after, "tki_inference_batch_size_bucket", {"le": "1.0"})
              - metric_value(before, "tki_inference_batch_size_bucket", {"le": "1.0"}))
    queries_done = metric_value(after, "tki_inference_batch_size_sum") - metric_value(before, "tki_inference_batch_size_sum")
    assert queries_done == 32
    assert batches - of_one >= 1, "no inference batch larger than 1"
    assert batches < 32


def test_overload_answers_503_with_retry_after_and_recovers(setup):
    s = setup
    q = s["queries"][0]

    async def main():
        # the first batch waits 400 ms for company, so the burst arrives while 4 requests are in flight
        async with asgi_client(config(s, max_queue=4, max_batch=64, max_wait_ms=400, fixed_wait=True)) as (_, c):
            burst = await asyncio.gather(*(c.post("/v1/search", files=[image_part(q)], data={"k": "3"})
                                           for _ in range(24)))
            after = await c.post("/v1/search", files=[image_part(q)], data={"k": "3"})
            metrics = (await c.get("/metrics")).text
        return burst, after, metrics

    burst, after, metrics = run(main())
    codes = Counter(r.status_code for r in burst)
    assert set(codes) == {200, 503}, codes
    assert codes[200] >= 4 and codes[503] >= 1
    for r in burst:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert "overloaded" in r.json()["error"] and "\n" not in r.json()["error"]
    assert after.status_code == 200
    assert metric_value(metrics, "tki_rejected_total", {"reason": "queue_full"}) == codes[503]
    assert metric_value(metrics, "tki_requests_in_flight") == 0


def test_hostile_uploads_get_4xx_and_the_service_keeps_serving(setup, tmp_path):
    s = setup
    folder = tmp_path / "hostile"
    expect = build_hostile_folder(folder, pacs_sample(s["pacs"], per_class=1))
    good_vec = s["emb"].embed_images([s["queries"][0]]).embeddings[0].tolist()

    async def main():
        async with asgi_client(config(s, max_body_bytes=2 * 2**20, max_images=4)) as (_, c):
            for name, reason in sorted(expect.items()):
                r = await c.post("/v1/search", files=[("image", (name, (folder / name).read_bytes()))], data={"k": "3"})
                if reason is None:
                    assert r.status_code == 200, (name, r.text)
                    continue
                assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
                err = r.json()["error"]
                assert reason in err and "\n" not in err and "Traceback" not in err, (name, err)
                if reason == "too many pixels":
                    assert r.status_code == 413
            img = [image_part(s["queries"][0])]
            bad = [
                (dict(json={"vectors": [good_vec[:-1]], "k": 3}), 422, "values"),
                (dict(content=b'{"vectors": [[NaN' + b", 0" * 15 + b"]]}",
                      headers={"content-type": "application/json"}), 422, "NaN"),
                (dict(json={"vectors": [[0.0] * 16]}), 422, "zeros"),
                (dict(json={"vectors": [good_vec], "k": 0}), 422, "k must be"),
                (dict(json={"vectors": [good_vec], "k": 1001}), 422, "k must be"),
                (dict(json={"vectors": [good_vec], "k": "ten"}), 422, "k must be"),
                (dict(json={"vectors": [good_vec], "k": True}), 422, "k must be"),
                (dict(json={"vectors": [good_vec], "where": ["domain"]}), 422, "where must be"),
                (dict(json={"vectors": [good_vec], "where": {"domain": {"$ne": 1}}}), 422, "values must be"),
                (dict(json={"vectors": [good_vec], "where": {"domain": []}}), 422, "empty list"),
                (dict(json={"vectors": [good_vec], "limit": 3}), 422, "unknown field"),
                (dict(json={"vectors": "abc"}), 422, "vectors must be"),
                (dict(json=[1, 2]), 422, "JSON body must be an object"),
                (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not valid JSON"),
                (dict(content=b"k=3", headers={"content-type": "text/plain"}), 415, "multipart"),
                (dict(files=img, data={"k": "3", "where": "{domain: sketch"}), 422, "not valid JSON"),
                (dict(files=img, data={"k": "-1"}), 422, "k must be"),
                (dict(data={"k": "3"}, files=[("note", ("empty.jpg", b""))]), 400, "empty"),
                (dict(files=[image_part(s["queries"][0])] * 5), 413, "Too many files"),
                (dict(content=b"x" * (3 * 2**20), headers={"content-type": "application/json"}), 413, "limit"),
            ]
            for kwargs, status, words in bad:
                r = await c.post("/v1/search", **kwargs)
                assert r.status_code == status, (kwargs.get("json"), r.status_code, r.text)
                err = r.json()["error"]
                assert words in err and "\n" not in err, (status, err)
            # a chunked body (no Content-Length) over the limit is cut off while it streams
            async def chunks():
                for _ in range(40):
                    yield b"x" * 100_000
            r = await c.post("/v1/search", content=chunks(), headers={"content-type": "application/json"})
            assert r.status_code == 413, r.text
            r = await c.post("/v1/embed", json={"vectors": [good_vec]})  # JSON embeds texts only
            assert r.status_code == 422 and "unknown field" in r.json()["error"], r.text
            r = await c.post("/v1/embed", content=b"k=3", headers={"content-type": "text/plain"})
            assert r.status_code == 415
            assert (await c.get("/healthz")).status_code == 200
            assert (await c.get("/readyz")).status_code == 200
            r = await c.post("/v1/search", files=img, data={"k": "3"})
            assert r.status_code == 200 and len(r.json()["results"][0]["keys"]) == 3
            metrics = (await c.get("/metrics")).text
        assert "status=\"500\"" not in metrics

    run(main())


def test_api_key_guards_the_api_but_not_health_and_cors_is_off_by_default(setup):
    s = setup

    async def main():
        async with asgi_client(config(s, api_key="s3cret-key")) as (_, c):
            r = await c.get("/v1/info")
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
            assert "Authorization: Bearer" in r.json()["error"]
            assert (await c.get("/v1/info", headers={"Authorization": "Bearer wrong"})).status_code == 401
            assert (await c.get("/v1/info", headers={"Authorization": "Basic s3cret-key"})).status_code == 401
            r = await c.post("/v1/search", files=[image_part(s["queries"][0])])
            assert r.status_code == 401
            ok = {"Authorization": "Bearer s3cret-key"}
            assert (await c.get("/v1/info", headers=ok)).status_code == 200
            assert (await c.get("/v1/items/0/thumbnail")).status_code == 401
            assert (await c.get("/v1/items/0/thumbnail", headers=ok)).status_code == 200
            for path in ("/healthz", "/readyz", "/", "/static/app.js"):
                assert (await c.get(path)).status_code == 200, path
            assert (await c.get("/metrics")).status_code == 401  # metrics and docs need the key (issue 21)
            pre = await c.options("/v1/search", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
            assert "access-control-allow-origin" not in pre.headers
        async with asgi_client(config(s, cors_origins=["http://app.example"])) as (_, c):
            pre = await c.options("/v1/search", headers={"Origin": "http://app.example",
                                                         "Access-Control-Request-Method": "POST"})
            assert pre.headers.get("access-control-allow-origin") == "http://app.example"
            pre = await c.options("/v1/search", headers={"Origin": "http://evil.example",
                                                         "Access-Control-Request-Method": "POST"})
            assert pre.headers.get("access-control-allow-origin") != "http://evil.example"

    run(main())


def test_items_thumbnails_and_info(setup):
    s = setup

    async def main():
        async with asgi_client(config(s, thumbnail_px=64)) as (_, c):
            info = (await c.get("/v1/info")).json()
            assert info["gallery"]["items"] == len(s["files"])
            assert info["gallery"]["domains"] == dict(sorted(Counter(s["domains"]).items()))
            assert info["gallery"]["classes"] == dict(sorted(Counter(f.parent.name for f in s["files"]).items()))
            assert info["gallery"]["version"] == (s["gallery"] / "CURRENT").read_text().strip()
            assert info["model"]["fingerprint"] == s["emb"].model_fingerprint
            assert info["gallery"]["metric"] == "cos" and info["gallery"]["dtype"] == "f32"
            key = 5
            meta = (await c.get(f"/v1/items/{key}")).json()["metadata"]
            assert meta["rel"] == s["files"][key].relative_to(s["pacs"]).as_posix() and "path" not in meta
            r = await c.get(f"/v1/items/{key}/thumbnail")
            assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
            thumb = Image.open(io.BytesIO(r.content))
            src = Image.open(s["files"][key])
            assert thumb.format == "JPEG" and max(thumb.size) <= 64
            assert abs(thumb.size[0] / thumb.size[1] - src.size[0] / src.size[1]) < 0.05
            # the thumbnail shows the item's file: close to the file reduced independently
            ref = np.asarray(src.convert("RGB").resize(thumb.size, Image.Resampling.BICUBIC), dtype=np.float32)
            assert np.abs(np.asarray(thumb.convert("RGB"), dtype=np.float32) - ref).mean() < 12
            for path, status in [(f"/v1/items/{len(s['files'])}", 404), (f"/v1/items/{len(s['files'])}/thumbnail", 404),
                                 ("/v1/items/-1/thumbnail", 422), ("/v1/items/..%2F..%2Fetc%2Fpasswd/thumbnail", 404),
                                 ("/v1/items/%2Fetc%2Fpasswd/thumbnail", 404), (f"/v1/items/{2**64}", 422)]:
                r = await c.get(path)
                assert r.status_code in (status, 404, 422), (path, r.status_code)
                assert "root:" not in r.text and r.headers["content-type"].startswith("application/json"), path
            docs = await c.get("/openapi.json")
            assert {"/v1/search", "/v1/embed", "/v1/info", "/v1/items/{key}/thumbnail"} <= set(docs.json()["paths"])
            assert (await c.get("/docs")).status_code == 200

    run(main())


def test_serve_cli_refuses_bad_input_in_one_line(setup, tmp_path, capsys):
    from tki_sdk.cli.main import main

    s = setup
    for argv, words in [
        (["serve", "--model", str(tmp_path), "--gallery", str(s["gallery"])], "holds no tki.json"),
        (["serve", "--model", str(s["model"]), "--gallery", str(tmp_path / "nope")], "is not a folder"),
        (["serve", "--model", str(s["model"]), "--gallery", str(s["gallery"]), "--max-batch", "0"], "--max-batch"),
        (["serve", "--model", str(s["model"]), "--gallery", str(tmp_path)], "not a gallery"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert words in err and len(err.splitlines()) == 1, err
    other, _ = make_tiny_export(tmp_path / "other", seed=1)
    assert main(["serve", "--model", str(other), "--gallery", str(s["gallery"])]) == 2
    err = capsys.readouterr().err.strip()
    assert "gallery was built with" in err and len(err.splitlines()) == 1, err


def test_a_lone_request_does_not_wait_for_a_batch_that_is_not_coming(setup):
    s = setup
    q = s["queries"][0]

    async def timed(c, n=5):
        times = []
        for _ in range(n):
            t0 = asyncio.get_running_loop().time()
            r = await c.post("/v1/search", files=[image_part(q)], data={"k": "3"})
            assert r.status_code == 200
            times.append(asyncio.get_running_loop().time() - t0)
        return min(times)

    async def main():
        async with asgi_client(config(s, max_wait_ms=600)) as (_, c):
            adaptive = await timed(c)
        async with asgi_client(config(s, max_wait_ms=600, fixed_wait=True)) as (_, c):
            fixed = await timed(c, 2)
        return adaptive, fixed

    adaptive, fixed = run(main())
    assert fixed >= 0.6  # the fixed wait holds a lone query for the whole max_wait_ms
    assert adaptive < 0.3  # the default answers as soon as nothing else is on its way
