"""Shared fixtures: a tiny trained checkpoint and the PACS sample location."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# torch must be loaded before usearch: usearch's extension links libstdc++ statically and, loaded first,
# breaks torch's C++ exception handling (torch.jit spins forever; pytorch/pytorch#109923).
import torch  # noqa: F401,E402

# The Embedder's engine choice caches its measurements; tests keep theirs out of the user's ~/.cache.
os.environ.setdefault("TKI_CACHE_DIR", tempfile.mkdtemp(prefix="tki-test-cache-"))

REPO = Path(__file__).resolve().parents[1]
PACS_DIR = Path(os.environ.get("TKI_PACS_DIR", REPO.parent / "shared" / "data" / "pacs" / "images"))
TINY_MODEL = "TKI-Tiny-ViT"
TINY_CLASSES = ["dog", "horse", "house", "guitar"]


def under_ci() -> bool:
    """True when ``$CI`` says the suite runs in continuous integration (``true``, ``1`` or ``yes``)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_pacs() -> Path:
    """The PACS folder, or skip the calling test where it is absent -- except under CI (``CI=true``), where a
    missing data folder fails the test instead of skipping it silently."""
    if not PACS_DIR.is_dir():
        msg = f"PACS images not found at {PACS_DIR} (set TKI_PACS_DIR)"
        if under_ci():
            pytest.fail(f"{msg}; CI=true requires the data folder", pytrace=False)
        pytest.skip(msg)
    return PACS_DIR


@pytest.fixture(scope="session")
def pacs_dir() -> Path:
    """PACS images (``<domain>/<class>/<file>``), read in place; tests skip where the folder is absent, and
    fail under CI (:func:`require_pacs`)."""
    return require_pacs()


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``tki train`` folder for the tiny open_clip config (random init), trained for a few steps."""
    from tki_sdk.train.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("tiny_ckpt") / "ckpt"
    cfg = TrainConfig(
        model_name=TINY_MODEL, classes=TINY_CLASSES, out=str(out), prompts=4,
        steps_expand=5, steps_aggregate=10, seed=0, progress=False,
    )
    return train(cfg)


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray with 2 CPUs for one test module (Ray imported here, only by the tests that ask for it);
    yields its address."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
