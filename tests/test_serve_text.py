"""Search by words through the service: text queries (JSON and form fields) answer the brute-force cosine top-k
of the gallery against open_clip's text tower in torch (``TKIModel.encode_text``, the independent reference),
concurrent text queries batch and answer as serial ones, the bounds (too long, too many, empty) are one-line
4xx, and an export without a text artifact answers text queries with a 422 naming the fix."""
from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from runtime_fixtures import make_tiny_export, pacs_sample  # noqa: E402
from serve_fixtures import SERVE_CLASSES, asgi_client, build_gallery  # noqa: E402
from text_fixtures import vanilla_export_with_text  # noqa: E402
from tki_sdk.serve import ServeConfig  # noqa: E402

K = 5


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pacs_dir):
    from tki_sdk.runtime.index.gallery import Gallery
    from tki_sdk.train.model import TKIModel

    root = tmp_path_factory.mktemp("serve_text")
    model = vanilla_export_with_text(root)
    files = pacs_sample(pacs_dir, per_class=2, classes=SERVE_CLASSES)
    gallery = build_gallery(model, files, pacs_dir, root / "gallery", exact=True)
    g = Gallery.view(gallery)
    keys = np.asarray(g.keys())
    vecs = g.get_vectors(keys).astype(np.float64)
    domains = [m["domain"] for m in g.get_metadata(keys)]
    ref = TKIModel.vanilla("TKI-Tiny-ViT")  # same random init as the export: the torch reference
    return {"model": model, "gallery": gallery, "keys": keys, "vecs": vecs, "domains": domains,
            "encode": lambda texts: ref.encode_text(texts).detach().numpy().astype(np.float64), "root": root,
            "pacs": pacs_dir, "files": files}


def config(s, **kw) -> ServeConfig:
    return ServeConfig(model=s["model"], gallery=s["gallery"], reload_interval_s=0, **kw)


def cosine_distances(s, q: np.ndarray) -> np.ndarray:
    return 1.0 - s["vecs"] @ q / (np.linalg.norm(s["vecs"], axis=1) * np.linalg.norm(q))


def expected(s, q: np.ndarray, k: int, domain: str | None = None) -> tuple[list[int], np.ndarray]:
    """Brute-force cosine top-k of the gallery for the reference query vector ``q``."""
    dist = cosine_distances(s, q)
    order = [i for i in np.argsort(dist, kind="stable") if domain is None or s["domains"][i] == domain][:k]
    return [int(s["keys"][i]) for i in order], dist[order]


def assert_hits(s, hit: dict, q: np.ndarray, k: int, domain: str | None = None) -> None:
    keys, dist = expected(s, q, k, domain)
    assert len(hit["keys"]) == k
    np.testing.assert_allclose(hit["distances"], dist, atol=1e-4)
    # each returned item lies at the returned distance from the reference query
    row = {int(key): i for i, key in enumerate(s["keys"])}
    np.testing.assert_allclose(cosine_distances(s, q)[[row[key] for key in hit["keys"]]], hit["distances"], atol=1e-4)
    # near-equal distances may swap places; where no two are that close, the lists agree exactly
    if np.min(np.diff(dist)) > 1e-4:
        assert hit["keys"] == keys
    if domain:
        assert all(m["domain"] == domain for m in hit["metadata"])
    assert all("path" not in m for m in hit["metadata"])


def run(coro):
    return asyncio.run(coro)


def test_text_search_json_and_form_equal_torch_brute_force(setup):
    s = setup
    default = s["encode"](["a photo of a dog.", "a photo of a horse."])  # the vanilla export's default template
    raw = s["encode"](["dog", "horse"])
    custom = s["encode"](["a sketch of a house"])

    async def main():
        async with asgi_client(config(s)) as (_, c):
            info = (await c.get("/v1/info")).json()
            assert info["text"] == {"available": True, "default_query": "a photo of a {}.", "ensemble": False,
                                    "context_length": 77}
            assert info["limits"]["max_texts"] == 64 and info["limits"]["max_text_chars"] == 1000

            r = await c.post("/v1/search", json={"text": "dog", "k": K})  # one string, the default construction
            assert r.status_code == 200, r.text
            body = r.json()
            assert len(body["results"]) == 1 and body["text_template"] == "a photo of a {}."
            assert_hits(s, body["results"][0], default[0], K)

            r = await c.post("/v1/search", json={"text": ["dog", "horse"], "text_template": "raw", "k": K,
                                                 "where": {"domain": "sketch"}})
            assert r.status_code == 200, r.text
            for hit, q in zip(r.json()["results"], raw):
                assert_hits(s, hit, q, K, "sketch")

            # multipart form: the repeatable text field, with k, where and a template holding {}
            form = [("text", "dog"), ("text", "horse"), ("k", str(K)), ("where", json.dumps({"domain": "photo"}))]
            r = await c.post("/v1/search", data={}, files=[(n, (None, v)) for n, v in form])
            assert r.headers["content-type"].startswith("application/json")
            assert r.status_code == 200, r.text
            assert [len(h["keys"]) for h in r.json()["results"]] == [K, K]
            for hit, q in zip(r.json()["results"], default):
                assert_hits(s, hit, q, K, "photo")
            r = await c.post("/v1/search", files=[("text", (None, "a house")), ("k", (None, "3")),
                                                  ("text_template", (None, "a sketch of {}"))])
            assert r.status_code == 200, r.text
            assert_hits(s, r.json()["results"][0], custom[0], 3)

            # a url-encoded form (curl -d text=dog) works as well
            r = await c.post("/v1/search", data={"text": "dog", "k": str(K)})
            assert r.status_code == 200, r.text
            assert_hits(s, r.json()["results"][0], default[0], K)

            # /v1/embed: JSON and form texts give the reference embeddings
            r = await c.post("/v1/embed", json={"text": ["dog", "horse"], "text_template": "raw"})
            assert r.status_code == 200, r.text
            e = np.asarray(r.json()["embeddings"])
            cos = (e * raw).sum(1) / (np.linalg.norm(e, axis=1) * np.linalg.norm(raw, axis=1))
            assert e.shape == raw.shape and cos.min() >= 0.9999
            r = await c.post("/v1/embed", files=[("text", (None, "dog"))])
            assert r.status_code == 200, r.text
            e = np.asarray(r.json()["embeddings"][0])
            assert e @ default[0] / (np.linalg.norm(e) * np.linalg.norm(default[0])) >= 0.9999

            # images still search as before on the same service
            img = s["files"][0]
            r = await c.post("/v1/search", files=[("image", (img.name, img.read_bytes()))], data={"k": "1"})
            assert r.status_code == 200 and r.json()["results"][0]["keys"] == [0]

    run(main())


def test_concurrent_text_queries_batch_and_answer_as_serial_ones(setup):
    s = setup
    words = ["dog", "horse", "house", "guitar", "a dog in a house"]

    async def main():
        async with asgi_client(config(s)) as (_, c):
            serial = []
            for w in words:
                r = await c.post("/v1/search", json={"text": w, "k": K})
                assert r.status_code == 200, r.text
                serial.append(r.json()["results"][0])
        # a long fixed wait: every request arrives while the first batch is still collecting
        async with asgi_client(config(s, max_wait_ms=3000, fixed_wait=True)) as (_, c):
            rs = await asyncio.gather(*[c.post("/v1/search", json={"text": w, "k": K}) for w in words])
        assert all(r.status_code == 200 for r in rs), [r.text for r in rs]
        for r, ref in zip(rs, serial):
            hit = r.json()["results"][0]
            assert hit["keys"] == ref["keys"]
            np.testing.assert_allclose(hit["distances"], ref["distances"], atol=1e-5)
        assert max(r.json()["batch_queries"] for r in rs) > 1

    run(main())


def test_text_bounds_are_one_line_errors_and_the_service_keeps_serving(setup):
    s = setup

    async def main():
        async with asgi_client(config(s, max_texts=3, max_text_chars=40)) as (_, c):
            cases = [
                ({"json": {"text": "x" * 41}}, 422, "--max-text-chars"),
                ({"json": {"text": ["dog"] * 4}}, 413, "--max-texts"),
                ({"files": [("text", (None, "dog"))] * 4}, 413, "--max-texts"),
                ({"files": [("text", (None, "dog"))] * 40}, 413, "--max-texts"),  # beyond the form's field cap
                ({"json": {"text": ""}}, 422, "text 0 is empty"),
                ({"json": {"text": ["dog", " \t\n"]}}, 422, "text 1 is empty"),
                ({"json": {"text": []}}, 422, "empty list"),
                ({"files": [("text", (None, ""))]}, 422, "text 0 is empty"),
                ({"json": {"text": 42}}, 422, "not a string"),
                ({"json": {"text": ["dog", None]}}, 422, "not a string"),
                ({"json": {"text": "dog", "text_template": "ensemble"}}, 422, "no learned domain vectors"),
                ({"json": {"text": "dog", "text_template": "nonsense"}}, 422, "holding {}"),
                ({"json": {"text": "dog", "vectors": [[0.0] * 32]}}, 422, "either vectors or text"),
                ({"json": {"vectors": [[1.0] * 32], "text_template": "raw"}}, 422, "text queries only"),
                ({"json": {"txt": "dog"}}, 422, "unknown field"),
                ({"files": [("text", (None, "dog")), ("image", ("a.jpg", s["files"][0].read_bytes()))]}, 422,
                 "not both"),
                ({"json": {"text": "dog", "k": 0}}, 422, "k must be"),
            ]
            for kwargs, status, words in cases:
                r = await c.post("/v1/search", **kwargs)
                assert r.status_code == status, (kwargs.get("json"), r.text)
                msg = r.json()["error"]
                assert words in msg and "\n" not in msg, msg
            r = await c.post("/v1/embed", json={"text": "y" * 41})
            assert r.status_code == 422 and "--max-text-chars" in r.json()["error"]
            r = await c.post("/v1/embed", json={"vectors": [[1.0] * 32]})
            assert r.status_code == 422 and "unknown field" in r.json()["error"]
            # at the bounds exactly: accepted
            r = await c.post("/v1/search", json={"text": ["z" * 40] * 3, "k": 2})
            assert r.status_code == 200, r.text
            assert len(r.json()["results"]) == 3
            assert (await c.get("/readyz")).status_code == 200

    run(main())


def test_text_on_an_export_without_text_is_422_naming_the_fix(setup, tmp_path):
    s = setup
    model, _ = make_tiny_export(tmp_path / "old_export")  # exported before text search: images only
    files = pacs_sample(s["pacs"], per_class=1, classes=("dog",))
    gallery = build_gallery(model, files, s["pacs"], tmp_path / "gallery")

    async def main():
        async with asgi_client(ServeConfig(model=model, gallery=gallery, reload_interval_s=0)) as (_, c):
            assert (await c.get("/v1/info")).json()["text"] == {"available": False}
            for path, kwargs in (("/v1/search", {"json": {"text": "a dog"}}),
                                 ("/v1/search", {"files": [("text", (None, "a dog"))]}),
                                 ("/v1/search", {"data": {"text": "a dog"}}),
                                 ("/v1/embed", {"json": {"text": ["a dog"]}})):
                r = await c.post(path, **kwargs)
                assert r.status_code == 422, r.text
                msg = r.json()["error"]
                assert "no text encoder" in msg and "without --no-text" in msg and "\n" not in msg
            r = await c.post("/v1/search", files=[("image", (files[0].name, files[0].read_bytes()))])
            assert r.status_code == 200 and r.json()["results"][0]["keys"][0] == 0  # images still work

    run(main())


def test_serve_refuses_a_tampered_text_artifact_at_start_exit_4(setup, tmp_path):
    s = setup
    model = tmp_path / "export"
    shutil.copytree(s["model"], model)
    text = json.loads((model / "tki.json").read_text())["text"]["artifacts"]["text_fp32"]["file"]
    data = bytearray((model / text).read_bytes())
    data[-1] ^= 0xFF  # same size, other content: only the SHA-256 tells
    (model / text).write_bytes(bytes(data))
    r = subprocess.run([sys.executable, "-m", "tki_sdk.cli.serve", "--model", str(model), "--gallery",
                        str(s["gallery"]), "--host", "127.0.0.1", "--port", "0", "--reload-interval", "0",
                        "--log-level", "warning"],
                       capture_output=True, text=True, timeout=120, cwd=str(Path(__file__).parent))
    assert r.returncode == 4, (r.returncode, r.stderr[-2000:])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tki serve: error: "), r.stderr
    assert "text_fp32" in lines[0] or text in lines[0], lines[0]
