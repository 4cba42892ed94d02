"""The carry plan of the GPU run (benchmarks/gpu/): pack, split, checksums on arrival, joining, ignore rules.

The shell scripts run for real on small stand-in wheels (random bytes under the real file names); the
expected checksums and joined bytes are computed here with hashlib, independently of ``sha256sum``.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACK = REPO / "benchmarks" / "gpu" / "pack_wheels.sh"
SUITE = REPO / "benchmarks" / "gpu" / "run_gpu_suite.sh"
WHEELS = {
    "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl": 2_600_000,  # split: > 1 MiB parts
    "open_clip_torch-3.3.0-py3-none-any.whl": 30_000,
    "ftfy-6.3.1-py3-none-any.whl": 4_000,
    "wcwidth-0.9.4-cp310-abi3-manylinux2014_x86_64.manylinux_2_17_x86_64.whl": 7_000,
}

pytestmark = pytest.mark.skipif(shutil.which("sha256sum") is None or shutil.which("split") is None,
                                reason="needs coreutils (sha256sum, split)")


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _run(*argv, cwd=None):
    return subprocess.run(["bash", *map(str, argv)], capture_output=True, text=True, timeout=120, cwd=cwd)


@pytest.fixture
def packed(tmp_path):
    src = tmp_path / "from"
    src.mkdir()
    blobs = {}
    for name, n in WHEELS.items():
        blobs[name] = os.urandom(n)
        (src / name).write_bytes(blobs[name])
    out = tmp_path / ".gpuwheels"
    r = _run(PACK, "--stretch", "--part-mb", "1", "--from", src, "--out", out, "--data", tmp_path / ".gpudata")
    assert r.returncode == 0, r.stderr
    return out, blobs


def _parts(out: Path) -> list[Path]:
    return sorted(out.glob("p[0-9]*"), key=lambda p: int(p.name[1:]))


def test_stretch_pack_splits_into_checked_parts(packed):
    out, blobs = packed
    parts = _parts(out)
    big = "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
    assert len(parts) == -(-WHEELS[big] // 2**20)  # one folder per MiB part
    joined = b""
    for p in parts:
        sums = dict(reversed(line.split("  ", 1)) for line in (p / "PARTSUMS").read_text().splitlines())
        files = sorted(f.name for f in p.iterdir() if f.name != "PARTSUMS")
        assert sorted(sums) == files
        for f in files:
            assert sums[f] == _sha((p / f).read_bytes())
            assert (p / f).stat().st_size <= 2**20
        joined += b"".join((p / f).read_bytes() for f in files if f.startswith(big))
    assert joined == blobs[big]
    last = parts[-1]
    whole = dict(reversed(line.split("  ", 1)) for line in (last / "SHA256SUMS").read_text().splitlines())
    assert whole == {k: _sha(v) for k, v in blobs.items()}
    assert {f.name for f in last.glob("*.whl")} == set(WHEELS) - {big}


def test_receive_checks_each_part_and_assemble_checks_the_wheels(packed, tmp_path):
    out, blobs = packed
    work = tmp_path / "work"
    parts = _parts(out)
    for p in parts[:-1]:
        r = _run(SUITE, "--receive", p, "--work", work)
        assert r.returncode == 0 and f"received {p.name}" in r.stdout, r.stderr
    res = tmp_path / "OUT"
    # the last part missing from the parts received: the joined wheel cannot match -> exit 4
    short = tmp_path / "short"
    shutil.copytree(parts[-1], short)
    for f in short.glob("*.part-*"):
        f.unlink()
    r = _run(SUITE, "--preset", "stretch", "--steps", "assemble", "--wheels", short, "--results", res, "--work", work)
    assert r.returncode == 4, r.stderr
    r = _run(SUITE, "--preset", "stretch", "--steps", "assemble", "--wheels", parts[-1], "--results", res,
             "--work", work)
    assert r.returncode == 0, r.stderr + (res / "gpu").joinpath("stretch-vit-b-32_run.log").read_text()
    for name, blob in blobs.items():
        assert (work / "wheels" / name).read_bytes() == blob


def test_a_corrupted_part_is_refused_on_arrival(packed, tmp_path):
    out, _ = packed
    bad = tmp_path / "bad"
    shutil.copytree(_parts(out)[0], bad)
    f = next(bad.glob("*.part-*"))
    data = bytearray(f.read_bytes())
    data[100] ^= 0xFF
    f.write_bytes(bytes(data))
    r = _run(SUITE, "--receive", bad, "--work", tmp_path / "work")
    assert r.returncode == 4 and "send that part again" in r.stderr
    assert not (tmp_path / "work" / "parts").exists()


@pytest.mark.parametrize("argv, needle", [
    (["--preset", "budget"], "--results DIR is needed"),
    (["--results", "x"], "--preset budget or --preset stretch"),
    (["--preset", "budget", "--results", "x", "--device", "tpu"], "--device must be cuda or cpu"),
])
def test_suite_usage_errors_are_one_line(argv, needle, tmp_path):
    r = _run(SUITE, *argv, "--work", tmp_path / "w", cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and needle in r.stderr, r.stderr


def test_carry_folders_are_git_ignored():
    if not (REPO / ".git").exists() or shutil.which("git") is None:
        pytest.skip("not a git checkout")
    for p in (".gpuwheels/p1/x.whl.part-aa", ".gpuwheels/budget/x.whl", ".gpudata/pacs/photo/dog/x.jpg"):
        r = subprocess.run(["git", "check-ignore", "-q", p], cwd=REPO)
        assert r.returncode == 0, f"{p} is not ignored: it would travel on every device call"
