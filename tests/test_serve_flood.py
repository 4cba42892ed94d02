"""A flood of idle connections on loopback (issue 21, finding 5): a real ``tki serve`` process whose file limit
is 512 gets 1,500 idle sockets; it keeps at most ``--max-connections`` open by closing the oldest idle ones,
``/healthz`` answers within 1 s throughout, the shedding is logged as one line (no flood of "Too many open
files"), and searches work afterwards. Bounded: 1,500 sockets at most, all closed at the end; the server is
stopped by the test."""
from __future__ import annotations

import select
import signal
import socket
import time

import pytest

pytest.importorskip("fastapi")
httpx = pytest.importorskip("httpx")

from runtime_fixtures import make_tiny_export, pacs_sample  # noqa: E402
from serve_fixtures import SERVE_CLASSES, build_gallery, free_port, uvicorn_process  # noqa: E402

FLOOD = 1500
CHUNK = 25
SERVER_FD_LIMIT = 512


def _connect_chunk(port: int, n: int, deadline_s: float = 3.0) -> list[socket.socket]:
    """``n`` non-blocking connects, returned once each is established (or after ``deadline_s``)."""
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        socks.append(s)
    poller = select.poll()
    pending = {s.fileno() for s in socks}
    for fd in pending:
        poller.register(fd, select.POLLOUT)
    end = time.monotonic() + deadline_s
    while pending and time.monotonic() < end:
        for fd, _ in poller.poll(100):
            pending.discard(fd)
            poller.unregister(fd)
    return socks


@pytest.mark.slow  # over 20 s: run by .ci/run after the default test run (pytest -m slow)
def test_idle_connection_flood_keeps_healthz_answering(tmp_path, pacs_dir):
    model, _ = make_tiny_export(tmp_path / "export")
    files = pacs_sample(pacs_dir, per_class=1, classes=SERVE_CLASSES)
    gallery = build_gallery(model, files, pacs_dir, tmp_path / "gallery", exact=True)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    args = ["--model", str(model), "--gallery", str(gallery), "--reload-interval", "0",
            "--max-connections", "200", "--backlog", "32", "--keep-alive", "30"]
    flood: list[socket.socket] = []
    probes: list[float] = []
    try:
        with uvicorn_process(args, port, fd_limit=SERVER_FD_LIMIT) as proc:
            try:
                while len(flood) < FLOOD:
                    flood += _connect_chunk(port, CHUNK)
                    if len(flood) % (10 * CHUNK) == 0:
                        t0 = time.monotonic()
                        r = httpx.get(f"{base}/healthz", timeout=1.0)
                        probes.append(time.monotonic() - t0)
                        assert r.status_code == 200
                for _ in range(5):  # at the cap: the newest 200 flood sockets are still open on the server
                    t0 = time.monotonic()
                    r = httpx.get(f"{base}/healthz", timeout=1.0)
                    probes.append(time.monotonic() - t0)
                    assert r.status_code == 200
                vec = [1.0] + [0.0] * 15
                r = httpx.post(f"{base}/v1/search", json={"vectors": [vec], "k": 2}, timeout=5.0)
                assert r.status_code == 200 and len(r.json()["results"][0]["keys"]) == 2
            finally:
                for s in flood:
                    s.close()
                flood.clear()
            r = httpx.get(f"{base}/readyz", timeout=2.0)
            assert r.status_code == 200
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=30)
    finally:
        for s in flood:
            s.close()
    log = out.decode(errors="replace")
    assert proc.returncode == 0, log[-2000:]
    assert len(probes) >= 10 and max(probes) < 1.0, probes
    cap_lines = [ln for ln in log.splitlines() if "connection cap of 200 reached" in ln]
    assert len(cap_lines) == 1, log[-2000:]
    assert sum("Too many open files" in ln or "out of system resource" in ln for ln in log.splitlines()) <= 1
    assert len(log.splitlines()) < 20, log[-3000:]
