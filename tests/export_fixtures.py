"""Helpers for the export tests: a small real-image folder, one cached tiny export, an independent reference."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_CACHE: dict[str, Any] = {}


def image_folder(dst: Path, pacs_dir: Path | None, n: int = 24) -> Path:
    """``dst`` with ``n`` real PACS files (every domain and class, sorted picks) or, without PACS, PNGs of
    smooth colour fields (written with Pillow)."""
    dst.mkdir(parents=True, exist_ok=True)
    if pacs_dir is not None and pacs_dir.is_dir():
        files = sorted(pacs_dir.rglob("*.jpg")) + sorted(pacs_dir.rglob("*.png"))
        files = sorted(files)[:: max(1, len(files) // n)][:n]
        for i, f in enumerate(files):
            shutil.copyfile(f, dst / f"{i:03d}_{f.parent.parent.name}_{f.parent.name}{f.suffix}")
        return dst
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        h, w = int(rng.integers(40, 90)), int(rng.integers(40, 90))
        yy, xx = np.mgrid[0:h, 0:w]
        img = np.stack([(xx * rng.uniform(1, 5)) % 255, (yy * rng.uniform(1, 5)) % 255,
                        (xx + yy) * rng.uniform(0.5, 3) % 255], -1).astype(np.uint8)
        Image.fromarray(img).save(dst / f"{i:03d}.png")
    return dst


def tiny_export(tmp_factory: Any, checkpoint: Path, pacs_dir: Path | None) -> dict[str, Any]:
    """One export of the tiny checkpoint (fp32, fp16, int8 with both schemes), shared by the test modules."""
    if "tiny" not in _CACHE:
        from tki_sdk.export.fused import load_model
        from tki_sdk.export.pipeline import ExportConfig, run_export

        root = tmp_factory.mktemp("tiny_export")
        calib = image_folder(root / "calib", pacs_dir)
        out = root / "export"
        result = run_export(ExportConfig(
            out=out, checkpoint=checkpoint, calib_images=calib, calib_count=16, val_count=8,
            timing_rounds=1, time_torch=False, progress=False,
        ))
        _CACHE["tiny"] = {"out": out, "calib": calib, "result": result, "checkpoint": checkpoint,
                          "model": load_model(checkpoint)}
    return _CACHE["tiny"]


def open_clip_pixels(files: list[Path], model: Any) -> np.ndarray:
    """Preprocess with open_clip's own eval transform (an implementation independent of the runtime's)."""
    import torch
    from open_clip.transform import PreprocessCfg, image_transform_v2
    from PIL import Image

    cfg = dict(model.clip.preprocess_cfg)
    cfg["size"] = tuple(cfg["size"])
    pp = PreprocessCfg(**{k: v for k, v in cfg.items() if k in PreprocessCfg.__dataclass_fields__})
    tf = image_transform_v2(pp, is_train=False)
    return torch.stack([tf(Image.open(f)) for f in files]).numpy()


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def torch_float64(model: Any, x: np.ndarray) -> np.ndarray:
    """``encode_image`` of a float64 copy of ``model`` (computed here, not with the export's helper)."""
    import copy

    import torch

    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        return m.encode_image(torch.from_numpy(np.asarray(x, dtype=np.float64))).numpy()


@pytest.fixture(scope="module")
def exported(tmp_path_factory: Any, tiny_checkpoint: Path, request: Any) -> dict[str, Any]:
    """A tiny export (fp32, fp16, int8) per test module; PACS images for validation when present."""
    pacs = None
    try:
        pacs = request.getfixturevalue("pacs_dir")
    except pytest.skip.Exception:
        pass
    return tiny_export(tmp_path_factory, tiny_checkpoint, pacs)
