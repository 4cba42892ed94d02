"""Helpers for the service tests: a tiny export with a PACS gallery, an in-process ASGI client, a real
uvicorn subprocess on a free loopback port."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, AsyncIterator, Iterator

import numpy as np

from runtime_fixtures import make_tiny_export, pacs_sample

SERVE_CLASSES = ("dog", "horse", "house", "guitar")


def build_gallery(model_dir: Path, files: list[Path], pacs_dir: Path, out: Path, **kwargs: Any) -> Path:
    """Embed ``files`` with the tiny model into a gallery saved at ``out`` (metadata from <domain>/<class>)."""
    from tki_sdk.runtime import Embedder, Gallery

    emb = Embedder(model_dir, threads=1)
    res = emb.embed_images(files, batch_size=16, workers=2)
    assert not res.errors, res.errors
    g = Gallery(emb.embedding_dim, model_fingerprint=emb.model_fingerprint, **kwargs)
    metas = []
    for f in files:
        rel = f.relative_to(pacs_dir)
        metas.append({"path": str(f), "rel": rel.as_posix(), "domain": rel.parts[0], "class": rel.parts[1]})
    g.add(np.arange(len(files), dtype=np.uint64), res.embeddings, metas)
    g.save(out)
    return out


def tiny_served_setup(root: Path, pacs_dir: Path, per_class: int = 3) -> tuple[Path, Path, list[Path]]:
    """(model folder, gallery folder, gallery files): the tiny model and a PACS gallery of every domain."""
    model, _ = make_tiny_export(root / "export")
    files = pacs_sample(pacs_dir, per_class=per_class, classes=SERVE_CLASSES)
    gallery = build_gallery(model, files, pacs_dir, root / "gallery")
    return model, gallery, files


@contextlib.asynccontextmanager
async def asgi_client(config: Any) -> AsyncIterator[tuple[Any, Any]]:
    """(app, httpx.AsyncClient) with the app's lifespan running (threads started, stopped at exit)."""
    import httpx

    from tki_sdk.serve import create_app

    app = create_app(config)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://tki.test", timeout=60) as client:
            yield app, client


def metric_value(text: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Value of one sample in a Prometheus text exposition (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in (labels or {}).items()):
                total += s.value
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_process(args: list[str], port: int, timeout: float = 60.0,
                    fd_limit: int | None = None) -> Iterator[subprocess.Popen]:
    """``python -m tki_sdk.cli.serve ARGS --port PORT`` on 127.0.0.1, yielded once /readyz answers 200; killed at
    exit if still running. ``fd_limit``: the server's soft RLIMIT_NOFILE (the test's own is untouched)."""
    import httpx

    def limit_fds() -> None:
        import resource

        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (fd_limit, hard))

    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tki_sdk.cli.serve", *args, "--host", "127.0.0.1",
                             "--port", str(port), "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                            preexec_fn=limit_fds if fd_limit else None)
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
                raise RuntimeError(f"server exited with {proc.returncode}: {out[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("server did not become ready in time")
            time.sleep(0.1)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if proc.stdout:
            proc.stdout.close()
