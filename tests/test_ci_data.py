"""Under CI (``CI=true``) a missing PACS folder fails the tests that need it instead of skipping them silently;
elsewhere they skip. Checked on a real pytest run in a subprocess (bounded), with the data folder pointed away."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# one test through the pacs_dir fixture, one through the direct check of test_cli_train
NEEDS_DATA = ["tests/test_runtime_preprocess.py::test_batch_equals_stacked_single_calls",
              "tests/test_cli_train.py::test_classes_from_dataset_dir"]


def _pytest(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["TKI_PACS_DIR"] = str(tmp_path / "no_such_pacs")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfs", *NEEDS_DATA],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


@pytest.mark.parametrize("ci", ["true", "1"])
def test_missing_data_fails_under_ci(tmp_path: Path, ci: str) -> None:
    r = _pytest(tmp_path, ci)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    # a fixture that fails is reported as an error, a test body as a failure: neither is a skip
    assert "1 failed, 1 error" in out and "skipped" not in out, out
    assert out.count("CI=true requires the data folder") >= 2, out


def test_missing_data_skips_outside_ci(tmp_path: Path) -> None:
    r = _pytest(tmp_path, None)
    out = r.stdout + r.stderr
    assert r.returncode == 0 and "2 skipped" in out and "failed" not in out, out
