"""``tki embed --engine ray`` leaves no Ray process behind, whether the run ends, fails or its driver is killed
with SIGKILL; the next run stops what an earlier one left.

Each test runs the real command as a subprocess that starts its own local Ray (no ``--address``), with
``$TKI_CACHE_DIR`` in the test's folder. "The processes of a run" are judged independently of the code under
test: every descendant of the driver seen while it ran, and every process whose command line or open files
name the run's Ray session folder (``/tmp/ray/session_*_<driver pid>``; Ray names it after the driver).
Every wait is bounded; every process a test starts is stopped by it.
"""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runtime_fixtures import copy_tree_sample, make_tiny_export, pacs_sample
from tki_sdk.runtime.pipeline.distributed import HOLD_ENV
from tki_sdk.runtime.pipeline.shards import list_shards

pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 60.0


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("export") / "tiny")[0]


@pytest.fixture(scope="module")
def images(pacs_dir, tmp_path_factory):
    dst = tmp_path_factory.mktemp("images")
    copy_tree_sample(pacs_sample(pacs_dir, per_class=20, classes=("dog", "horse")), pacs_dir, dst)  # 160 files
    return dst


def start_embed(export: Path, images: Path, out: Path, cache: Path, *extra: str,
                hold: Path | None = None) -> subprocess.Popen:
    """The command as a subprocess in a session of its own; its stderr goes to ``proc.stderr_path``.

    ``hold``: a file that exists; the run's actors stop after their first batches while it does
    (:data:`~tki_sdk.runtime.pipeline.distributed.HOLD_ENV`), so the run is still mid-way, Ray up, when the
    test acts on it (the rows of a small run otherwise reach the driver within a fraction of a second)."""
    argv = [sys.executable, "-m", "tki_sdk.cli.runtime", "embed", "--model", str(export), "--images", str(images),
            "--out", str(out), "--threads", "1", "--batch-size", "4", "--engine", "ray", "--checkpoint-every", "8",
            *extra]
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["TKI_CACHE_DIR"] = str(cache)
    if hold is not None:
        env[HOLD_ENV] = str(hold)
    log = out.parent / f"{out.name}-stderr-{time.monotonic_ns()}.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, env=env, cwd=str(REPO), stdout=subprocess.DEVNULL, stderr=f,
                                start_new_session=True)
    proc.stderr_path = log  # type: ignore[attr-defined]
    return proc


def stderr_of(proc: subprocess.Popen) -> str:
    return Path(proc.stderr_path).read_text(errors="replace")  # type: ignore[attr-defined]


def wait_for(cond, timeout: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"the run ended (exit {proc.returncode}) before the point the test waits for: "
                        f"{stderr_of(proc)[-2000:]}")
        time.sleep(0.2)
    pytest.fail(f"not reached within {timeout} s")


def descendants(pid: int) -> dict[int, tuple[float, str]]:
    try:
        return {c.pid: (c.create_time(), c.name()) for c in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return {}


def sessions_of(pid: int) -> list[str]:
    return glob.glob(f"/tmp/ray/session_*_{pid}")


def session_holders(session: str) -> list[psutil.Process]:
    """Processes whose command line or open files name ``session``."""
    out = []
    for p in psutil.process_iter(["pid", "cmdline"]):
        if p.pid == os.getpid():
            continue
        try:
            if any(session in a for a in (p.info["cmdline"] or ())) or \
                    any(f.path.startswith(session) for f in p.open_files()):
                if p.status() != psutil.STATUS_ZOMBIE:
                    out.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return out


def still_running(seen: dict[int, tuple[float, str]]) -> list[str]:
    left = []
    for pid, (started, name) in seen.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3 and p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{pid} {name}")
        except psutil.NoSuchProcess:
            continue
    return left


def assert_run_left_nothing(seen: dict[int, tuple[float, str]], sessions: list[str]) -> None:
    """Within GONE_WITHIN_S, none of ``seen`` runs and no process names one of ``sessions``."""
    deadline = time.monotonic() + GONE_WITHIN_S
    while True:
        left = still_running(seen) + [f"{p.pid} {p.name()}" for s in sessions for p in session_holders(s)]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert not left, f"Ray processes of the run still running {GONE_WITHIN_S:.0f} s after it ended: {left}"


def kill_mid_run(proc: subprocess.Popen, shards: Path) -> tuple[dict[int, tuple[float, str]], list[str]]:
    """Wait for the run's first checkpoint (Ray up, actors embedding), note its processes, SIGKILL the driver
    alone (not its process group)."""
    seen: dict[int, tuple[float, str]] = {}

    def checkpointed() -> bool:
        seen.update(descendants(proc.pid))
        return len(list_shards(shards)) >= 1

    wait_for(checkpointed, 240, proc)
    seen.update(descendants(proc.pid))
    sessions = sessions_of(proc.pid)
    assert any(n == "raylet" for _, n in seen.values()), f"no raylet among the driver's processes: {seen}"
    assert sessions, "no Ray session folder named after the driver"
    assert proc.poll() is None, "the run ended before the test could kill it mid-way"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    return seen, sessions


def stop_leftovers(seen: dict[int, tuple[float, str]], sessions: list[str]) -> None:
    """Clean-up of what a failed test leaves: SIGKILL by pid, only the processes of the test's runs."""
    for pid, (started, _) in seen.items():
        try:
            p = psutil.Process(pid)
            if abs(p.create_time() - started) < 1e-3:
                p.kill()
        except psutil.Error:
            pass
    for s in sessions:
        for p in session_holders(s):
            try:
                p.kill()
            except psutil.Error:
                pass


def test_driver_sigkilled_mid_run_leaves_no_ray_process(export, images, tmp_path):
    out, cache, hold = tmp_path / "g", tmp_path / "cache", tmp_path / "hold"
    hold.touch()
    proc = start_embed(export, images, out, cache, hold=hold)
    seen: dict[int, tuple[float, str]] = {}
    sessions: list[str] = []
    try:
        seen, sessions = kill_mid_run(proc, out / "embed-run" / "shards")
        assert_run_left_nothing(seen, sessions)
        assert not list((cache / "ray-sessions").glob("*.json")), "the run's session record was not removed"
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_leftovers(seen, sessions)


@pytest.mark.slow  # over 20 s: run by .ci/run after the default test run (pytest -m slow)
def test_next_run_stops_what_a_killed_run_and_watchdog_left_then_ends_clean(export, images, tmp_path):
    out, cache, hold = tmp_path / "g", tmp_path / "cache", tmp_path / "hold"
    hold.touch()
    proc = start_embed(export, images, out, cache, hold=hold)
    seen: dict[int, tuple[float, str]] = {}
    sessions: list[str] = []
    try:
        # the watchdog dies with the driver: nothing of the first run is stopped until the next run starts
        shards = out / "embed-run" / "shards"
        wait_for(lambda: len(list_shards(shards)) >= 1, 240, proc)
        seen.update(descendants(proc.pid))
        sessions = sessions_of(proc.pid)
        watchdogs = [pid for pid in seen if "ray_reaper" in " ".join(psutil.Process(pid).cmdline())]
        assert proc.poll() is None, "the run ended before the test could kill it mid-way"
        for pid in [*watchdogs, proc.pid]:
            os.kill(pid, signal.SIGKILL)
        proc.wait(timeout=30)
        hold.unlink()  # the second run runs free; the first run's Ray head runs on until the second stops it

        second = start_embed(export, images, out, cache)
        try:
            second_seen: dict[int, tuple[float, str]] = {}

            def ended() -> bool:
                second_seen.update(descendants(second.pid))
                return second.poll() is not None

            wait_for(ended, 300)
            err = stderr_of(second)
            assert second.returncode == 0, err[-2000:]
            assert "left by an earlier run" in err
            assert "resumed" in err  # the first run's checkpoints were used
            seen.update(second_seen)
            sessions += sessions_of(second.pid)
        finally:
            if second.poll() is None:
                second.kill()
                second.wait(timeout=30)
        assert_run_left_nothing(seen, sessions)
        assert not list((cache / "ray-sessions").glob("*.json"))
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_leftovers(seen, sessions)


def test_refused_request_after_ray_started_leaves_no_ray_process(export, images, tmp_path):
    """A run that fails (here: GPUs this machine does not have, refused after the local Ray started) stops it."""
    if os.path.exists("/dev/nvidia0"):
        pytest.skip("this machine has a GPU")
    out, cache = tmp_path / "g", tmp_path / "cache"
    proc = start_embed(export, images, out, cache, "--gpus-per-actor", "1")
    seen: dict[int, tuple[float, str]] = {}
    sessions: list[str] = []
    try:
        def ended() -> bool:
            seen.update(descendants(proc.pid))
            return proc.poll() is not None

        wait_for(ended, 240)
        err = stderr_of(proc)
        lines = [ln for ln in err.splitlines() if ln.startswith("tki embed: error:")]
        assert proc.returncode == 2, err[-2000:]
        assert len(lines) == 1 and "--gpus-per-actor 1" in lines[0] and "GPU" in lines[0], err[-2000:]
        sessions = sessions_of(proc.pid)
        assert sessions, "the run never started a local Ray"
        assert_run_left_nothing(seen, sessions)
    finally:
        if proc.poll() is None:
            proc.kill()
        stop_leftovers(seen, sessions)
