"""The service runs with torch, torchvision, open_clip and geoopt blocked from import, and loads none of the
training, export or benchmark modules."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("fastapi")

from runtime_fixtures import BLOCK_TRAINING_STACK  # noqa: E402
from serve_fixtures import tiny_served_setup  # noqa: E402

SCRIPT = BLOCK_TRAINING_STACK + textwrap.dedent(
    """
    from pathlib import Path
    from starlette.testclient import TestClient
    from tki_sdk.serve import ServeConfig, create_app

    model, gallery, query = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    app = create_app(ServeConfig(model=model, gallery=gallery, reload_interval_s=0))
    with TestClient(app) as c:
        r = c.post("/v1/search", files=[("image", (query.name, query.read_bytes()))], data={"k": "4"})
        assert r.status_code == 200, r.text
        assert len(r.json()["results"][0]["keys"]) == 4
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED
                    or m.startswith(("tki_sdk.export", "tki_sdk.benchmarks", "tki_sdk.train.trainer", "tki_sdk.train.model",
                                     "tki_sdk.train.head", "tki_sdk.train.clip")))
    print("LOADED", loaded)
    assert not loaded, loaded
    print("OK")
    """
)


def test_service_answers_with_torch_blocked_and_loads_no_training_module(tmp_path, pacs_dir):
    model, gallery, files = tiny_served_setup(tmp_path, pacs_dir, per_class=1)
    r = subprocess.run([sys.executable, "-c", SCRIPT, str(model), str(gallery), str(files[0])],
                       capture_output=True, text=True, timeout=180)
    assert r.returncode == 0 and "OK" in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
