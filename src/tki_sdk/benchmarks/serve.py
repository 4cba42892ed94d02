"""``tki-bench serve``: ``tki serve`` on loopback under load, micro-batching against batch-1 serving, a soak.

One run, one machine, one model (default: the export's ``int8`` artifact when it has one):

1. a gallery is built from a seeded sample of the dataset with ``Embedder.embed_images`` (its img/s is the
   reference rate of the same model without HTTP);
2. the service runs as a separate process (``python -m tki_sdk.cli.serve``) twice: with micro-batching
   (``--max-batch``, default 32) and with ``--max-batch 1``. Against each, an asyncio driver (keep-alive HTTP/1.1 on asyncio streams, requests encoded once) keeps
   ``c`` image searches in flight (``c`` = 1, 4, 16, 64), each level for ``--level-seconds``; QPS, latency
   percentiles, errors, and the mean inference batch size (from the service's ``/metrics``) per level;
3. a soak at concurrency ``--soak-concurrency`` for ``--soak-seconds`` (default 300) on the batching
   service, with a new gallery version saved into its folder halfway (the service reloads it live):
   errors, requests answered by each version, and the growth of the server's resident memory from the
   start to the end of the soak.

Goals (on a 2-core CPU, int8): at concurrency 16 batching gives >= 1.5x the QPS of batch-1 serving, and
search QPS >= 80% of ``embed_images``' img/s; the soak has zero errors and grows RSS by < 10%. The load
generator shares the machine's cores with the service: its CPU time and the load average are recorded.
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.benchmarks.datasets import DomainDataset, dataset_dir
from tki_sdk.benchmarks.results import markdown_table
from tki_sdk.common.errors import UsageError
from tki_sdk.common.model_metadata import ModelMetadata
from tki_sdk.benchmarks.options import SuiteOptions

#: Status lines of a long run (shown by the console scripts, like progress; library code never prints).
_status = logging.getLogger("tki_sdk.progress.bench_serve")


BATCHING_GAIN_TARGET = 1.5
HTTP_FRACTION_TARGET = 0.8
RSS_GROWTH_LIMIT = 0.10


# ---------------------------------------------------------------------------------------------- service process
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server:
    """``python -m tki_sdk.cli.serve`` on a free loopback port; ``stop()`` sends SIGTERM and returns the status."""

    def __init__(self, model_dir: Path, gallery: Path, precision: str | None, args: SuiteOptions,
                 max_batch: int, log: Path) -> None:
        import httpx

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        cmd = [sys.executable, "-m", "tki_sdk.cli.serve", "--model", str(model_dir), "--gallery", str(gallery),
               "--host", "127.0.0.1", "--port", str(self.port), "--max-batch", str(max_batch),
               "--max-wait-ms", str(args.max_wait_ms), "--threads", str(args.threads),
               "--workers", str(args.workers), "--max-queue", "1024", "--reload-interval", "1",
               "--log-level", "warning"]
        if precision:
            cmd += ["--precision", precision]
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"tki serve exited with {self.proc.returncode}; see {log}")
            try:
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                self.proc.kill()
                raise RuntimeError(f"tki serve did not become ready in 120 s; see {log}")
            time.sleep(0.2)

    def rss(self) -> int:
        import psutil

        return int(psutil.Process(self.proc.pid).memory_info().rss)

    def metrics(self) -> dict[str, float]:
        import httpx
        from prometheus_client.parser import text_string_to_metric_families

        out: dict[str, float] = {}
        for fam in text_string_to_metric_families(httpx.get(self.base + "/metrics", timeout=10).text):
            for s in fam.samples:
                if s.name in ("tki_inference_batch_size_sum", "tki_inference_batch_size_count",
                              "tki_gallery_reloads_total", "tki_gallery_items"):
                    out[s.name] = s.value
        return out

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log.close()
        return int(self.proc.returncode)


# ---------------------------------------------------------------------------------------------- load driver
def _multipart(name: str, data: bytes, k: int) -> tuple[str, bytes]:
    """(content type, body) of a search request: one image part and the ``k`` field."""
    boundary = "tki-bench-" + os.urandom(8).hex()
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"k\"\r\n\r\n{k}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n").encode()
    return f"multipart/form-data; boundary={boundary}", head + data + f"\r\n--{boundary}--\r\n".encode()


async def _post(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, request: bytes) -> tuple[int, bytes]:
    """One HTTP/1.1 keep-alive exchange on an open connection: (status, body)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    return status, await reader.readexactly(length)


def _search_request(host: str, port: int, ctype: str, body: bytes) -> bytes:
    """One encoded HTTP/1.1 ``POST /v1/search`` with ``body`` of content type ``ctype``."""
    return (f"POST /v1/search HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


def _image_requests(host: str, port: int, queries: list[tuple[str, bytes]], k: int) -> list[bytes]:
    """One encoded ``POST /v1/search`` per query image (multipart)."""
    return [_search_request(host, port, *_multipart(name, data, k)) for name, data in queries]


def _vector_requests(host: str, port: int, vectors: np.ndarray, k: int) -> list[bytes]:
    """One encoded ``POST /v1/search`` per query vector (JSON ``{"vectors": [[...]], "k": k}``)."""
    return [_search_request(host, port, "application/json",
                            json.dumps({"vectors": [[round(float(x), 7) for x in v]], "k": k}).encode())
            for v in vectors]


async def _drive(host: str, port: int, queries: list[tuple[str, bytes]] | list[bytes], concurrency: int,
                 seconds: float, k: int, on_response: Any = None) -> dict[str, Any]:
    """Keep ``concurrency`` searches in flight for ``seconds`` over as many keep-alive connections.

    The requests are encoded once up front and exchanged with a minimal HTTP/1.1 client on asyncio streams:
    the load generator shares the service's cores, and a general-purpose client (httpx) spent ~4.5 ms of CPU
    per request here, as much as the service's own HTTP layer.
    """

    requests = (list(queries) if queries and isinstance(queries[0], bytes)  # already encoded (vector queries)
                else _image_requests(host, port, queries, k))  # type: ignore[arg-type]
    latencies: list[float] = []
    errors: dict[str, int] = {}
    versions: dict[str, int] = {}
    t_end = time.perf_counter() + seconds
    counter = [0]

    def error(kind: str) -> None:
        errors[kind] = errors.get(kind, 0) + 1

    async def worker() -> None:
        conn = None
        while time.perf_counter() < t_end:
            if conn is None:
                try:
                    conn = await asyncio.open_connection(host, port)
                except OSError as e:
                    error(type(e).__name__)
                    await asyncio.sleep(0.1)
                    continue
            i = counter[0]
            counter[0] += 1
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(_post(*conn, requests[i % len(requests)]), 60)
            except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError, IndexError) as e:
                error(type(e).__name__)
                conn[1].close()
                conn = None
                continue
            dt = time.perf_counter() - t0
            if status == 200:
                latencies.append(dt)
                v = json.loads(body).get("gallery_version", "")
                versions[v] = versions.get(v, 0) + 1
                if on_response is not None:
                    on_response()
            else:
                error(str(status))
        if conn is not None:
            conn[1].close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    lat = np.asarray(latencies) * 1000
    pct = (lambda q: float(np.percentile(lat, q))) if lat.size else (lambda q: float("nan"))
    return {"concurrency": concurrency, "seconds": wall, "requests": int(lat.size),
            "errors": int(sum(errors.values())), "error_kinds": errors, "qps": lat.size / wall,
            "p50_ms": pct(50), "p95_ms": pct(95), "p99_ms": pct(99), "versions": versions}


def _level(server: _Server, queries: list[tuple[str, bytes]] | list[bytes], concurrency: int, seconds: float,
           k: int) -> dict[str, Any]:
    before = server.metrics()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    res = asyncio.run(_drive("127.0.0.1", server.port, queries, concurrency, seconds, k))
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    after = server.metrics()
    batches = after["tki_inference_batch_size_count"] - before["tki_inference_batch_size_count"]
    res["mean_batch_size"] = ((after["tki_inference_batch_size_sum"] - before["tki_inference_batch_size_sum"])
                              / batches) if batches else float("nan")
    res["driver_cpu_s"] = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    res.pop("versions", None)
    return res


def vector_levels(model_dir: Path, precision: str | None, fingerprint: str, dim: int, args: SuiteOptions,
                  n: int, levels: list[int], seconds: float, work: Path, progress: bool) -> dict[str, Any]:
    """``tki serve`` answering vector queries (JSON, one vector per request) on an ``n``-vector gallery of
    embedding-shaped data, for each HNSW backend, at each concurrency of ``levels``: the search itself is
    what the service spends its time on, so this shows whether concurrent searches wait for each other
    (usearch: one at a time; hnswlib: in parallel). Same data and graph settings for every backend."""
    from tki_sdk.benchmarks.search_data import embedding_shaped_vectors
    from tki_sdk.runtime.index.backends import BACKENDS
    from tki_sdk.runtime.index.gallery import Gallery

    base = embedding_shaped_vectors(n, dim, seed=args.seed, stream=0)
    queries = embedding_shaped_vectors(256, dim, seed=args.seed, stream=1)
    out: dict[str, Any] = {"vectors": n, "dim": dim, "queries": len(queries), "backends": {}}
    for backend in BACKENDS:
        if progress:
            _status.info(f"serve [vectors, {backend}]: building a {n:,}-vector gallery")
        g = Gallery(dim, index=backend, model_fingerprint=fingerprint, threads=args.threads)
        g.add(np.arange(n, dtype=np.uint64), base)
        path = g.save(work / f"vectors-{backend}")
        del g
        server = _Server(model_dir, path, precision, args, args.max_batch, work / f"server-{backend}.log")
        try:
            requests = _vector_requests("127.0.0.1", server.port, queries, args.k)
            asyncio.run(_drive("127.0.0.1", server.port, requests, 4, min(2.0, seconds), args.k))  # warm-up
            rows = []
            for c in levels:
                if progress:
                    _status.info(f"serve [vectors, {backend}]: concurrency {c} for {seconds:g} s")
                r = asyncio.run(_drive("127.0.0.1", server.port, requests, c, seconds, args.k))
                r.pop("versions", None)
                rows.append(r)
        finally:
            code = server.stop()
        out["backends"][backend] = {"levels": rows, "exit_code": code,
                                    "scaling": rows[-1]["qps"] / rows[0]["qps"] if rows[0]["qps"] else float("nan")}
    return out


def _soak(server: _Server, gallery: Path, queries: list[tuple[str, bytes]], args: SuiteOptions,
          seconds: float, progress: bool) -> dict[str, Any]:
    from tki_sdk.runtime import Gallery

    samples: list[tuple[float, int]] = []
    stop = threading.Event()
    reload_info: dict[str, Any] = {}
    t0 = time.perf_counter()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter() - t0, server.rss()))
            stop.wait(1.0)

    def reload_halfway() -> None:
        if stop.wait(seconds / 2):
            return
        g = Gallery.load(gallery)
        drop = g.keys()[:: 50]  # the new version: 2% fewer items
        g.remove(drop)
        g.save(gallery)
        reload_info.update(at_s=time.perf_counter() - t0, items_after=len(g), removed=int(len(drop)),
                           version=(gallery / "CURRENT").read_text().strip())

    threads = [threading.Thread(target=sample, daemon=True), threading.Thread(target=reload_halfway, daemon=True)]
    for t in threads:
        t.start()
    if progress:
        _status.info(f"soak: {seconds:g} s at concurrency {args.soak_concurrency}, gallery reload at {seconds / 2:g} s")
    res = asyncio.run(_drive("127.0.0.1", server.port, queries, args.soak_concurrency, seconds, args.k))
    stop.set()
    for t in threads:
        t.join(30)
    m = server.metrics()
    rss = [r for _, r in samples]
    start = rss[0] if rss else float("nan")
    res.update(
        rss_start_mb=start / 2**20, rss_end_mb=rss[-1] / 2**20, rss_max_mb=max(rss) / 2**20,
        rss_growth=(rss[-1] - start) / start, rss_samples=[(round(t, 1), round(r / 2**20, 1)) for t, r in samples],
        reload=reload_info, reloads_seen=m.get("tki_gallery_reloads_total"),
        gallery_items_end=m.get("tki_gallery_items"),
    )
    return res


# ---------------------------------------------------------------------------------------------- run
def _pick_precision(model_dir: Path, wanted: str | None) -> str | None:

    if wanted:
        return wanted
    arts = ModelMetadata.load(model_dir).artifacts or {}
    return "int8" if "int8" in arts else None


def _plot(path: Path, title: str, levels: dict[str, list[dict[str, Any]]], soak: dict[str, Any] | None,
          embed_rate: float) -> Path:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    ncols = 3 if soak else 2
    fig, axes = plt.subplots(1, ncols, figsize=(5.2 * ncols, 4.2))
    for mode, rows in levels.items():
        c = [r["concurrency"] for r in rows]
        axes[0].plot(c, [r["qps"] for r in rows], marker="o", label=mode)
        axes[1].plot(c, [r["p50_ms"] for r in rows], marker="o", label=f"{mode} p50")
        axes[1].plot(c, [r["p99_ms"] for r in rows], marker="x", linestyle="--", label=f"{mode} p99")
    axes[0].axhline(embed_rate, color="grey", linestyle=":", label="embed_images img/s")
    axes[0].set(xscale="log", xlabel="concurrent requests", ylabel="searches / s", title="throughput")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrent requests", ylabel="latency (ms)", title="latency")
    for ax in axes[:2]:
        ax.set_xticks([r["concurrency"] for r in next(iter(levels.values()))])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if soak:
        t = [s[0] for s in soak["rss_samples"]]
        axes[2].plot(t, [s[1] for s in soak["rss_samples"]])
        if soak["reload"].get("at_s") is not None:
            axes[2].axvline(soak["reload"]["at_s"], color="grey", linestyle=":", label="gallery reload")
            axes[2].legend(fontsize=8)
        axes[2].set(xlabel="seconds", ylabel="server RSS (MiB)",
                    title=f"soak: {soak['requests']} requests, {soak['errors']} errors")
        axes[2].grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _screenshot(base: str, query: Path, out: Path) -> Path:
    from playwright.sync_api import sync_playwright

    chromium = os.environ.get("TKI_CHROMIUM", "/usr/bin/chromium")
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 820})
            page.goto(base + "/")
            page.wait_for_function("document.querySelectorAll('#domain option').length > 1", timeout=30_000)
            page.select_option("#domain", "photo")
            page.set_input_files("#query-file", str(query))
            page.wait_for_function("[...document.querySelectorAll('#results li img')].length > 0 && "
                                   "[...document.querySelectorAll('#results li img')].every(i => i.naturalWidth > 0)",
                                   timeout=30_000)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def _serve_versions() -> dict[str, str | None]:
    """Versions of the web stack (the result envelope records the model stack)."""

    out: dict[str, str | None] = {}
    for dist in ("fastapi", "starlette", "uvicorn", "prometheus-client", "python-multipart"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def run(args: SuiteOptions) -> dict[str, Any]:
    from tki_sdk.benchmarks.parity import model_dir_or_quick_export
    from tki_sdk.runtime import Embedder, Gallery

    levels, vlevels = list(args.levels), list(args.vector_levels)  # positive integers (cli/bench_options/serve.py)
    n_vectors = args.vector_gallery if args.vector_gallery is not None else (5000 if args.quick else 200_000)
    if n_vectors < 0:
        raise UsageError("--vector-gallery must be >= 0 (0 skips the vector queries)")
    level_s = args.level_seconds if args.level_seconds is not None else (3.0 if args.quick else 20.0)
    soak_s = args.soak_seconds if args.soak_seconds is not None else (8.0 if args.quick else 300.0)
    n_gallery = args.gallery_images or (96 if args.quick else 2000)
    progress = not args.no_progress
    load_start = os.getloadavg()

    model_dir, tmp_model = model_dir_or_quick_export(args, "serve")
    work = tempfile.TemporaryDirectory(prefix="tki-bench-serve-")
    try:
        precision = _pick_precision(model_dir, args.precision)
        data = DomainDataset(dataset_dir(args.dataset_dir, required_by="tki-bench serve"))
        if args.query_domain not in data.domains:
            raise UsageError(f"--query-domain {args.query_domain!r} not in {data.domains}")
        rng = np.random.default_rng(args.seed)
        q_records = data.records(args.query_domain)
        q_pick = sorted(rng.choice(len(q_records), size=min(args.queries, len(q_records)), replace=False))
        query_paths = [q_records[i].path for i in q_pick]
        query_set = {str(p) for p in query_paths}
        pool = [r for r in data.records() if str(r.path) not in query_set]
        g_pick = sorted(rng.choice(len(pool), size=min(n_gallery, len(pool)), replace=False))
        g_records = [pool[i] for i in g_pick]
        try:
            emb = Embedder(model_dir, precision=precision, threads=args.threads)
        except (FileNotFoundError, ValueError) as e:
            raise UsageError(str(e)) from None
        emb.embed_pixels(np.stack([emb.preprocessor.process(p) for p in query_paths[:8]]))  # warm-up
        if progress:
            _status.info(f"serve: embedding a {len(g_records)}-image gallery with {emb.metadata.model_name} {emb.precision}")
        res = emb.embed_images([str(r.path) for r in g_records], batch_size=32, progress=progress)
        embed_rate = len(res.indices) / res.stats["wall_s"]
        g = Gallery(emb.embedding_dim, model_fingerprint=emb.model_fingerprint,
                    model_info={"model_name": emb.metadata.model_name, "precision": emb.precision})
        g.add(res.indices.astype(np.uint64), res.embeddings,
              [{"path": str(g_records[i].path), "domain": g_records[i].domain, "class": g_records[i].class_name}
               for i in res.indices])
        gallery = g.save(Path(work.name) / "gallery")
        model_name, served_precision = emb.metadata.model_name, emb.precision
        fingerprint, dim = emb.model_fingerprint, emb.embedding_dim
        weights = emb.metadata.weights
        del emb, g, res
        queries = [(p.name, p.read_bytes()) for p in query_paths]

        modes = {"batching": args.max_batch, "batch-1": 1}
        by_mode: dict[str, list[dict[str, Any]]] = {}
        soak = None
        shot = None
        exit_codes = {}
        log = Path(work.name) / "server.log"
        for mode, max_batch in modes.items():
            server = _Server(model_dir, gallery, precision, args, max_batch, log)
            try:
                asyncio.run(_drive("127.0.0.1", server.port, queries, 4, min(3.0, level_s), args.k))  # warm-up
                rows = []
                for c in levels:
                    if progress:
                        _status.info(f"serve [{mode}]: concurrency {c} for {level_s:g} s")
                    r = _level(server, queries, c, level_s, args.k)
                    r["rss_mb"] = server.rss() / 2**20
                    rows.append(r)
                by_mode[mode] = rows
                if mode == "batching" and args.screenshot is not None:
                    shot = str(_screenshot(server.base, query_paths[0], args.screenshot))
                if mode == "batching" and soak_s > 0:
                    soak = _soak(server, gallery, queries, args, soak_s, progress)
            finally:
                exit_codes[mode] = server.stop()
        vectors = None
        if n_vectors > 0:
            vectors = vector_levels(model_dir, precision, fingerprint, dim, args, n_vectors, vlevels, level_s,
                                    Path(work.name), progress)
    finally:
        work.cleanup()
        if tmp_model is not None:
            tmp_model.cleanup()

    load_end = os.getloadavg()
    at = {mode: {r["concurrency"]: r for r in rows} for mode, rows in by_mode.items()}
    ref_c = 16 if 16 in at["batching"] else max(levels)
    gain = at["batching"][ref_c]["qps"] / at["batch-1"][ref_c]["qps"]
    best = max(r["qps"] for r in by_mode["batching"])
    http_fraction = at["batching"][ref_c]["qps"] / embed_rate
    table = []
    for c in levels:
        row = [str(c)]
        for mode in modes:
            r = at[mode][c]
            row += [f"{r['qps']:.1f}", f"{r['p50_ms']:.0f} / {r['p95_ms']:.0f} / {r['p99_ms']:.0f}",
                    str(r["errors"]), f"{r['mean_batch_size']:.1f}"]
        table.append(row)
    md = markdown_table(["concurrency", "QPS (batching)", "p50/p95/p99 ms", "errors", "mean batch",
                         "QPS (batch-1)", "p50/p95/p99 ms", "errors", "mean batch"], table)
    md += (f"\n\nbatching / batch-1 at concurrency {ref_c}: {gain:.2f}x (target >= {BATCHING_GAIN_TARGET}x: "
           f"{'met' if gain >= BATCHING_GAIN_TARGET else 'NOT met'}); search QPS at {ref_c} = "
           f"{http_fraction:.0%} of embed_images' {embed_rate:.1f} img/s (target >= {HTTP_FRACTION_TARGET:.0%}: "
           f"{'met' if http_fraction >= HTTP_FRACTION_TARGET else 'NOT met'}); best QPS {best:.1f}")
    if soak:
        ok = soak["errors"] == 0 and soak["rss_growth"] < RSS_GROWTH_LIMIT and (soak["reloads_seen"] or 0) >= 1
        md += (f"\n\nsoak {soak['seconds']:.0f} s at concurrency {args.soak_concurrency}: {soak['requests']} requests, "
               f"{soak['errors']} errors, {soak['qps']:.1f} QPS, p99 {soak['p99_ms']:.0f} ms; gallery reloaded "
               f"{soak['reloads_seen']:.0f}x (answers per version {list(soak['versions'].values())}); RSS "
               f"{soak['rss_start_mb']:.0f} -> {soak['rss_end_mb']:.0f} MiB ({soak['rss_growth']:+.1%}, limit "
               f"+{RSS_GROWTH_LIMIT:.0%}): {'met' if ok else 'NOT met'}")
    md += (f"\n\n{model_name} {served_precision} ({weights.get('source', '?')} weights), gallery "
           f"{n_gallery} images, k={args.k}, service --threads {args.threads} --workers {args.workers} "
           f"--max-wait-ms {args.max_wait_ms:g}; load average at start {load_start[0]:.2f}, at end {load_end[0]:.2f} "
           "(the load generator runs on the same cores)")
    if vectors:
        vrows = []
        for c_i, c in enumerate(vectors["backends"][next(iter(vectors["backends"]))]["levels"]):
            row = [str(c["concurrency"])]
            for b in vectors["backends"].values():
                r = b["levels"][c_i]
                row += [f"{r['qps']:.0f}", f"{r['p50_ms']:.1f} / {r['p99_ms']:.1f}", str(r["errors"])]
            vrows.append(row)
        heads = ["concurrency"] + [h for b in vectors["backends"] for h in (f"QPS ({b})", "p50/p99 ms", "errors")]
        md += (f"\n\nVector queries (JSON, one {vectors['dim']}-d vector per request) on a {vectors['vectors']:,}-vector gallery "
               f"of embedding-shaped data, per HNSW backend:\n\n" + markdown_table(heads, vrows)
               + "\n\nQPS at the highest level / at the lowest: "
               + ", ".join(f"{b} {v['scaling']:.2f}x" for b, v in vectors["backends"].items()))
    stem = getattr(args, "name", None) or ("quick" if args.quick else "results")
    png = _plot(args.suite_dir / f"{stem}.png",
                f"tki serve: {model_name} {served_precision}, {n_gallery}-image gallery, loopback, 2 threads",
                by_mode, soak, embed_rate)
    return {
        "model_dir": str(model_dir), "model_name": model_name, "precision": served_precision, "weights": weights,
        "gallery_images": n_gallery, "query_domain": args.query_domain, "queries": len(query_paths), "k": args.k,
        "service": {"max_batch": args.max_batch, "max_wait_ms": args.max_wait_ms, "threads": args.threads,
                    "workers": args.workers},
        "level_seconds": level_s, "levels": by_mode, "embed_images_img_per_s": embed_rate,
        "batching_gain_at": {"concurrency": ref_c, "gain": gain, "target": BATCHING_GAIN_TARGET,
                             "met": gain >= BATCHING_GAIN_TARGET},
        "search_qps_fraction_of_embed": {"concurrency": ref_c, "fraction": http_fraction,
                                         "target": HTTP_FRACTION_TARGET, "met": http_fraction >= HTTP_FRACTION_TARGET},
        "serve_versions": _serve_versions(),
        "soak": soak, "server_exit_codes": exit_codes, "vector_queries": vectors, "load_average_start": load_start,
        "load_average_end": load_end, "screenshot": shot, "markdown": md, "plots": [str(png)],
    }
