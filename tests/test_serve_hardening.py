"""tki serve, hardening round 2 (issue 21): no path oracle through filters, JSON that used to give 500 gets a
one-line 422, query vectors that vanish or overflow in float32 are refused, API keys checked at start and
required on the docs and metrics, an allowed-hosts list, thumbnails only from regular files inside the image
root, decoding inside the request timeout and shared fairly, integrity failures exit 4."""
from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402

from runtime_fixtures import TINY_DIM, copy_tree_sample, make_tiny_export, pacs_sample  # noqa: E402
from serve_fixtures import SERVE_CLASSES, asgi_client, build_gallery, metric_value  # noqa: E402
from tki_sdk.common.errors import EXIT_DAMAGED, EXIT_USAGE, UsageError  # noqa: E402
from tki_sdk.runtime import Embedder  # noqa: E402
from tki_sdk.serve import ServeConfig  # noqa: E402


@pytest.fixture(scope="module")
def setup(tmp_path_factory, pacs_dir):
    root = tmp_path_factory.mktemp("serve_hardening")
    model, _ = make_tiny_export(root / "export")
    images = root / "images"
    files = copy_tree_sample(pacs_sample(pacs_dir, per_class=2, classes=SERVE_CLASSES), pacs_dir, images)
    gallery = build_gallery(model, files, images, root / "gallery", exact=True)
    emb = Embedder(model, threads=1)
    vecs = emb.embed_images(files).embeddings.astype(np.float64)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    query = pacs_sample(pacs_dir, per_class=1, classes=("giraffe",))[0]
    return {"model": model, "gallery": gallery, "files": files, "images": images, "emb": emb, "vecs": vecs,
            "query": query, "qvec": emb.embed_images([query]).embeddings[0], "root": root, "pacs": pacs_dir}


def config(s, **kw) -> ServeConfig:
    kw.setdefault("gallery", s["gallery"])
    return ServeConfig(model=s["model"], reload_interval_s=0, **kw)


def one_line_error(r) -> str:
    assert r.headers["content-type"].startswith("application/json"), r.text[:200]
    err = r.json()["error"]
    assert "\n" not in err and "Traceback" not in err
    return err


def brute_force_keys(s, q: np.ndarray, k: int) -> list[int]:
    d = 1.0 - s["vecs"] @ (q.astype(np.float64) / np.linalg.norm(q))
    return [int(i) for i in np.argsort(d, kind="stable")[:k]]


# ------------------------------------------------------------------------------------------ path oracle
def test_filters_accept_only_fields_the_answers_show(setup):
    s = setup
    existing = str(s["files"][0])

    async def main():
        async with asgi_client(config(s)) as (_, c):
            for where in ({"path": existing}, {"path": "/nope/x.jpg"}, {"path": [existing, "/etc/passwd"]}):
                r = await c.post("/v1/search", json={"vectors": s["qvec"].tolist(), "k": 3, "where": where})
                assert r.status_code == 422, (where, r.text)
                err = one_line_error(r)
                assert "path" in err and "domain" in err, err  # names the field and what may be filtered
            r = await c.post("/v1/search", files=[("image", ("q.jpg", s["query"].read_bytes()))],
                             data={"k": "3", "where": json.dumps({"path": existing})})
            assert r.status_code == 422
            r = await c.post("/v1/search", json={"vectors": s["qvec"].tolist(), "k": 3, "where": {"colour": "red"}})
            assert r.status_code == 422 and "colour" in one_line_error(r)
            # fields the answers show stay filterable
            rel = s["files"][3].relative_to(s["images"]).as_posix()
            r = await c.post("/v1/search", json={"vectors": s["qvec"].tolist(), "k": 3, "where": {"rel": rel}})
            assert r.status_code == 200 and r.json()["results"][0]["keys"] == [3]
            info = (await c.get("/v1/info")).json()
            assert "path" not in info["filter_fields"] and {"domain", "class", "rel"} <= set(info["filter_fields"])
        async with asgi_client(config(s, expose_paths=True)) as (_, c):
            r = await c.post("/v1/search", json={"vectors": s["qvec"].tolist(), "k": 3, "where": {"path": existing}})
            assert r.status_code == 200, r.text
            hit = r.json()["results"][0]
            assert hit["keys"] == [0] and hit["metadata"][0]["path"] == existing

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ 500 -> 422
def test_json_that_gave_500_gets_a_one_line_422(setup):
    s = setup
    vec = ", ".join(["0.5"] * (TINY_DIM - 1))
    deep = 100_000
    bodies = {
        "400-digit integer": '{"vectors": [[1' + "0" * 400 + ", " + vec + "]]}",
        "where nested 100,000 deep": '{"vectors": [[1, ' + vec + ']], "where": ' + '{"a": ' * deep + "1" + "}" * deep + "}",
        "lists nested 100,000 deep": '{"vectors": ' + "[" * deep + "]" * deep + "}",
        "int64 underflow in where": '{"vectors": [[1, ' + vec + ']], "where": {"domain": -9223372036854775809}}',
        "uint64 in where": '{"vectors": [[1, ' + vec + ']], "where": {"domain": [1, 18446744073709551616]}}',
    }

    async def main():
        async with asgi_client(config(s)) as (_, c):
            for name, body in bodies.items():
                r = await c.post("/v1/search", content=body.encode(), headers={"content-type": "application/json"})
                assert r.status_code == 422, (name, r.status_code, r.text[:300])
                one_line_error(r)
            r = await c.post("/v1/search", files=[("image", ("q.jpg", s["query"].read_bytes()))],
                             data={"k": "3", "where": '{"domain": ' * 5000 + '"x"' + "}" * 5000})
            assert r.status_code == 422, r.text[:300]
            # still serving, and no 500 was ever counted
            r = await c.post("/v1/search", json={"vectors": s["qvec"].tolist(), "k": 3, "where": {"domain": "sketch"}})
            assert r.status_code == 200
            metrics = (await c.get("/metrics")).text
        assert 'status="500"' not in metrics

    asyncio.run(main())


def _depth_reference(text: bytes) -> int | None:
    """Nesting depth by walking the characters one by one (strings and escapes followed); None for a
    backslash outside a string (invalid JSON: the parser stops there, so the depth after it never matters)."""
    depth = deepest = 0
    in_string = escaped = False
    for ch in text.decode("latin-1"):
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch == "\\":
            return None
        elif ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in "]}":
            depth -= 1
    return deepest


def test_json_depth_equals_a_character_walk():
    from tki_sdk.serve.inputs import json_depth

    rng = np.random.default_rng(0)
    alphabet = np.frombuffer(b'[]{}"\\ax', dtype=np.uint8)
    texts = [b'{"a": "[[[\\"[[", "b": [[1]]}', b'["\\\\", [[1]]]', b'{"a": "x\\\\\\"[[["}', b"[" * 50 + b"]" * 50]
    texts += [rng.choice(alphabet, size=int(rng.integers(1, 60))).tobytes() for _ in range(3000)]
    compared = 0
    for text in texts:
        want = _depth_reference(text)
        if want is not None:
            assert json_depth(text) == want, text
            compared += 1
    assert compared > 500
    for text in texts[:4]:
        json.loads(text)  # the fixed cases are valid JSON


def test_query_vectors_that_vanish_or_overflow_in_float32_are_refused(setup):
    s = setup
    zeros = [0.0] * (TINY_DIM - 1)

    async def main():
        async with asgi_client(config(s)) as (_, c):
            for row, words in [([1e20] + zeros, "float32"), ([1e-300] + zeros, "float32"),
                               ([3e38] * TINY_DIM, "float32"), ([1e-46] * TINY_DIM, "float32")]:
                r = await c.post("/v1/search", json={"vectors": [s["qvec"].tolist(), row], "k": 3})
                assert r.status_code == 422, (row[:2], r.text)
                assert words in one_line_error(r) and "vector 1" in r.json()["error"]
            # a large but representable vector points where the unscaled one does
            for scale in (1e15, 1e-15):
                r = await c.post("/v1/search", json={"vectors": (s["qvec"].astype(np.float64) * scale).tolist(), "k": 5})
                assert r.status_code == 200, r.text
                assert r.json()["results"][0]["keys"] == brute_force_keys(s, s["qvec"], 5)

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ keys and hosts
BAD_KEYS = ["", "   ", "\t", "s3cret ", " s3cret", "s3cret\n", "s3\x01cret", "clé-secrète", "s3cret\x7f"]


@pytest.mark.parametrize("key", BAD_KEYS)
def test_bad_api_keys_are_refused_at_start_from_the_flag_and_from_the_environment(setup, key, monkeypatch):
    from tki_sdk.cli.base import OneLineParser
    from tki_sdk.cli.serve import API_KEY_ENV, add_arguments, config_from_args

    s = setup
    parser = OneLineParser(prog="tki serve")
    add_arguments(parser)
    base = ["--model", str(s["model"]), "--gallery", str(s["gallery"])]
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    with pytest.raises(UsageError) as e:
        config_from_args(parser.parse_args(base + ["--api-key", key]))
    assert e.value.code == EXIT_USAGE and "--api-key" in str(e.value) and "\n" not in str(e.value)
    assert key.strip() == "" or key.strip() not in str(e.value)  # the key itself is never echoed
    monkeypatch.setenv(API_KEY_ENV, key)
    with pytest.raises(UsageError) as e:
        config_from_args(parser.parse_args(base))
    assert e.value.code == EXIT_USAGE and API_KEY_ENV in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(ValueError, match="api_key"):
        ServeConfig(model=s["model"], gallery=s["gallery"], api_key=key)


def test_a_good_key_from_the_environment_is_used(setup, monkeypatch):
    from tki_sdk.cli.base import OneLineParser
    from tki_sdk.cli.serve import API_KEY_ENV, add_arguments, config_from_args

    s = setup
    parser = OneLineParser(prog="tki serve")
    add_arguments(parser)
    monkeypatch.setenv(API_KEY_ENV, "Good-Key_123~")
    cfg = config_from_args(parser.parse_args(["--model", str(s["model"]), "--gallery", str(s["gallery"])]))
    assert cfg.api_key == "Good-Key_123~"


def test_with_a_key_the_docs_and_metrics_need_it_and_health_stays_open(setup):
    s = setup
    ok = {"Authorization": "Bearer s3cret-key"}
    guarded = ("/docs", "/openapi.json", "/redoc", "/metrics", "/v1/info")

    async def main():
        async with asgi_client(config(s, api_key="s3cret-key")) as (_, c):
            for path in guarded:
                r = await c.get(path)
                assert r.status_code == 401, (path, r.status_code)
                assert r.headers["www-authenticate"].startswith("Bearer") and one_line_error(r)
                assert (await c.get(path, headers={"Authorization": "Bearer wrong"})).status_code == 401
                assert (await c.get(path, headers=ok)).status_code == 200, path
            for path in ("/healthz", "/readyz", "/", "/static/app.js"):
                assert (await c.get(path)).status_code == 200, path
        async with asgi_client(config(s, api_key="s3cret-key", docs=False)) as (_, c):
            for path in ("/docs", "/openapi.json", "/redoc"):
                assert (await c.get(path, headers=ok)).status_code == 404, path
            assert (await c.get("/metrics", headers=ok)).status_code == 200
        async with asgi_client(config(s, allowed_hosts=["tki.test", "search.example"])) as (_, c):
            assert (await c.get("/v1/info")).status_code == 200  # the client's Host is tki.test
            assert (await c.get("/v1/info", headers={"Host": "search.example"})).status_code == 200
            r = await c.get("/v1/info", headers={"Host": "evil.example"})
            assert r.status_code == 400 and "host" in one_line_error(r).lower()

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ thumbnails
def test_thumbnails_come_only_from_regular_files_inside_the_image_root(setup, tmp_path):
    s = setup
    images = tmp_path / "images"
    files = copy_tree_sample([f for f in s["files"]], s["images"], images)
    gallery = build_gallery(s["model"], files, images, tmp_path / "gallery", exact=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.jpg"
    shutil.copyfile(s["query"], secret)
    swapped = 1
    files[swapped].unlink()
    files[swapped].symlink_to(secret)  # a file swapped for a link to an image outside the root
    dir_item = len(files) - 1  # a whole folder swapped for a link to a folder outside the root
    moved = outside / "moved"
    shutil.copytree(files[dir_item].parent, moved)
    shutil.rmtree(files[dir_item].parent)
    files[dir_item].parent.symlink_to(moved, target_is_directory=True)
    inside_link = 2  # a link that stays inside the root is fine
    files[inside_link].unlink()
    files[inside_link].symlink_to(files[0])
    fifo_item = 4
    files[fifo_item].unlink()
    os.mkfifo(files[fifo_item])
    unaffected = [i for i in range(len(files)) if i not in (swapped, dir_item, inside_link, fifo_item)
                  and files[i].parent != files[dir_item].parent]

    async def main():
        async with asgi_client(config(s, gallery=gallery)) as (_, c):
            for key in (swapped, dir_item, fifo_item):
                r = await c.get(f"/v1/items/{key}/thumbnail")
                assert r.status_code == 404, (key, r.status_code)
                assert "image root" in one_line_error(r) or "regular file" in r.json()["error"], r.json()
            r = await c.get(f"/v1/items/{inside_link}/thumbnail")
            assert r.status_code == 200
            for key in unaffected[:3]:
                r = await c.get(f"/v1/items/{key}/thumbnail")
                assert r.status_code == 200 and Image.open(io.BytesIO(r.content)).format == "JPEG"

    asyncio.run(main())


def test_the_image_root_of_an_item():
    from tki_sdk.serve.thumbnails import image_root_of

    assert image_root_of({"path": "/data/imgs/sketch/dog/1.png", "rel": "sketch/dog/1.png"}, None) == Path("/data/imgs")
    assert image_root_of({"path": "/data/imgs/sketch/dog/1.png", "rel": "other/1.png"}, None) == Path("/data/imgs/sketch/dog")
    assert image_root_of({"path": "/data/imgs/1.png", "rel": "../../1.png"}, None) == Path("/data/imgs")
    assert image_root_of({"path": "/data/imgs/1.png"}, None) == Path("/data/imgs")
    assert image_root_of({"path": "/data/imgs/1.png", "rel": "1.png"}, Path("/srv")) == Path("/srv")
    assert image_root_of({"rel": "1.png"}, None) is None


# ------------------------------------------------------------------------------------------ decoding budget
def _png(side: int, colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (side, side), colour).save(buf, format="PNG")
    return buf.getvalue()


def _decode_seconds(s, data: bytes) -> float:
    """This machine's time to decode and preprocess ``data`` once on one thread (fastest of three)."""
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        s["emb"].preprocessor.process(data)
        times.append(time.perf_counter() - t0)
    return min(times)


def test_decoding_runs_inside_the_timeout_and_a_small_query_is_not_starved(setup):
    s = setup
    side, timeout, workers = 1500, 1.5, 2
    # enough images that decoding them on this machine takes at least 3x the timeout on ``workers`` threads
    # (a fixed count finished inside the timeout on a faster CPU)
    one = _decode_seconds(s, _png(side, (0, 40, 90)))
    n = max(48, int(np.ceil(3 * timeout * workers / one)))
    big = [("image", (f"big{i}.png", _png(side, (i * 5 % 256, 40, 90)))) for i in range(n)]
    small = [("image", ("q.jpg", s["query"].read_bytes()))]
    limits = {"max_images": n, "max_request_pixels": n * side * side}

    async def small_query(c, delay: float) -> tuple[int, float]:
        await asyncio.sleep(delay)
        t0 = time.monotonic()
        r = await c.post("/v1/search", files=small, data={"k": "3"})
        return r.status_code, time.monotonic() - t0

    async def big_query(c) -> tuple[int, float, str]:
        t0 = time.monotonic()
        r = await c.post("/v1/search", files=big, data={"k": "3"})
        return r.status_code, time.monotonic() - t0, r.text

    async def main():
        # over the per-request pixel budget: refused before any decoding
        async with asgi_client(config(s, max_images=n, max_request_pixels=20 * side * side,
                                      request_timeout_s=timeout)) as (_, c):
            (code, took, text), (small_code, small_took) = await asyncio.gather(big_query(c), small_query(c, 0.05))
            assert code == 413 and "pixel" in json.loads(text)["error"], text
            assert small_code == 200 and small_took < 2.0
        # within the budget but more decoding than the timeout allows: cut at the timeout
        async with asgi_client(config(s, request_timeout_s=timeout, workers=workers, **limits)) as (_, c):
            (code, took, text), (small_code, small_took) = await asyncio.gather(big_query(c), small_query(c, 0.4))
            metrics = (await c.get("/metrics")).text
            after = await c.post("/v1/search", files=small, data={"k": "3"})
        assert code == 504, (code, took, n, one, text[:200])
        assert took < timeout + 1.5, took
        assert small_code == 200 and small_took < 2.0, small_took
        assert metric_value(metrics, "tki_rejected_total", {"reason": "timeout"}) == 1
        assert after.status_code == 200

    asyncio.run(main())


# ------------------------------------------------------------------------------------------ exit statuses
def test_serve_exits_4_for_a_damaged_gallery_or_a_tampered_model(setup, tmp_path, capsys):
    from tki_sdk.cli.main import main

    s = setup
    gallery = tmp_path / "gallery"
    shutil.copytree(s["gallery"], gallery)
    version = gallery / (gallery / "CURRENT").read_text().strip()
    target = max((p for p in version.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    b = target.read_bytes()
    mid = len(b) // 2
    target.write_bytes(b[:mid] + bytes(x ^ 0xFF for x in b[mid : mid + 256]) + b[mid + 256 :])
    assert main(["serve", "--model", str(s["model"]), "--gallery", str(gallery)]) == EXIT_DAMAGED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and target.name in err, err

    model = tmp_path / "model"
    shutil.copytree(s["model"], model)
    other, _ = make_tiny_export(tmp_path / "other", seed=1)
    shutil.copyfile(other / "model.onnx", model / "model.onnx")
    assert main(["serve", "--model", str(model), "--gallery", str(s["gallery"])]) == EXIT_DAMAGED
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.onnx" in err, err
