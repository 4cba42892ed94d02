"""Helpers for the runtime tests: a tiny ONNX model with its tki.json, PACS samples, hostile image files.

Torch-free on purpose (the ONNX graph is built with ``onnx.helper``), so the torch-blocked subprocess test
can use it too.
"""
from __future__ import annotations

import io
import shutil
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from tki_sdk.common.model_metadata import INPUT_NAME, OUTPUT_NAME, ModelMetadata, PreprocessConfig, sha256_file

TINY_SIZE = 32
TINY_PATCH = 8
TINY_CHANNELS = 6
TINY_DIM = 16


def tiny_weights(seed: int = 0, size: int = TINY_SIZE, dim: int = TINY_DIM) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    g = size // TINY_PATCH
    return {
        "conv_w": (rng.standard_normal((TINY_CHANNELS, 3, TINY_PATCH, TINY_PATCH)) * 0.1).astype(np.float32),
        "conv_b": (rng.standard_normal(TINY_CHANNELS) * 0.1).astype(np.float32),
        "fc_w": (rng.standard_normal((TINY_CHANNELS * g * g, dim)) * 0.1).astype(np.float32),
        "fc_b": (rng.standard_normal(dim) * 0.1).astype(np.float32),
    }


def tiny_reference(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """The tiny model in float64 numpy: patch conv (stride = kernel) -> ReLU -> flatten -> linear -> L2 norm."""
    n, c, h, _ = x.shape
    p = TINY_PATCH
    g = h // p
    xr = x.astype(np.float64).reshape(n, c, g, p, g, p)
    conv = np.einsum("ncIaJb,ocab->noIJ", xr, w["conv_w"].astype(np.float64)) + w["conv_b"][None, :, None, None]
    feat = np.maximum(conv, 0).reshape(n, -1)
    z = feat @ w["fc_w"].astype(np.float64) + w["fc_b"]
    return z / np.linalg.norm(z, axis=1, keepdims=True)


def _tiny_onnx_bytes(w: dict[str, np.ndarray], size: int, fixed_batch: int | None = None) -> bytes:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    batch: Any = fixed_batch if fixed_batch else "batch"
    inp = helper.make_tensor_value_info(INPUT_NAME, TensorProto.FLOAT, [batch, 3, size, size])
    out = helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.FLOAT, [batch, w["fc_b"].shape[0]])
    inits = [numpy_helper.from_array(v, name=k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", [INPUT_NAME, "conv_w", "conv_b"], ["conv"], kernel_shape=[TINY_PATCH, TINY_PATCH],
                         strides=[TINY_PATCH, TINY_PATCH]),
        helper.make_node("Relu", ["conv"], ["relu"]),
        helper.make_node("Flatten", ["relu"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["z"]),
        helper.make_node("LpNormalization", ["z"], [OUTPUT_NAME], axis=1, p=2),
    ]
    graph = helper.make_graph(nodes, "tki_tiny", [inp], [out], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_tiny_export(
    out: Path,
    *,
    seed: int = 0,
    size: int = TINY_SIZE,
    dim: int = TINY_DIM,
    preprocess: dict[str, Any] | None = None,
    fixed_batch: int | None = None,
    extra_artifacts: dict[str, dict[str, Any]] | None = None,
) -> tuple[Path, dict[str, np.ndarray]]:
    """Write ``model.onnx`` + ``tki.json`` (through ModelMetadata) into ``out``; returns (folder, weights)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    w = tiny_weights(seed, size, dim)
    (out / "model.onnx").write_bytes(_tiny_onnx_bytes(w, size, fixed_batch))
    pre = PreprocessConfig.from_dict({"size": [size, size], "interpolation": "bicubic", "resize_mode": "shortest",
                                      **(preprocess or {})})
    arts = {"fp32": {"file": "model.onnx", "bytes": (out / "model.onnx").stat().st_size,
                     "sha256": sha256_file(out / "model.onnx")}}
    arts.update(extra_artifacts or {})
    md = ModelMetadata(
        model_name=f"tiny-test-{seed}",
        embedding_dim=dim,
        preprocess=pre,
        head="none",
        output_space="clip_l2",
        metric="cos",
        opset=17,
        artifacts=arts,
        default_precision="fp32",
        weights={"source": "random", "ref": f"seed {seed}", "sha256": None},
    )
    md.save(out)
    return out, w


def pacs_sample(pacs_dir: Path, per_class: int = 2, domains: tuple[str, ...] | None = None,
                classes: tuple[str, ...] = ("dog", "horse")) -> list[Path]:
    """First ``per_class`` files (sorted) of each class in each domain: deterministic real images."""
    out = []
    for d in sorted(p.name for p in pacs_dir.iterdir() if p.is_dir()):
        if domains and d not in domains:
            continue
        for c in classes:
            out += sorted((pacs_dir / d / c).iterdir())[:per_class]
    return out


def copy_tree_sample(files: list[Path], pacs_dir: Path, dst: Path) -> list[Path]:
    """Copy PACS files into ``dst`` keeping ``<domain>/<class>/<file>``."""
    out = []
    for f in files:
        t = dst / f.relative_to(pacs_dir)
        t.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, t)
        out.append(t)
    return out


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width x height`` RGB pixels (valid signature + IHDR + tiny IDAT + IEND)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 16)) + chunk(b"IEND", b"")


def exif_rotated_jpeg(rgb: "Any", orientation: int = 6) -> bytes:
    """JPEG bytes of ``rgb`` (a PIL RGB image) with an EXIF Orientation tag."""
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=92, exif=exif.tobytes())
    return buf.getvalue()


def build_hostile_folder(dst: Path, pacs_files: list[Path]) -> dict[str, str | None]:
    """Mix copies of PACS files with hostile ones under ``dst``; returns ``{filename: reason keyword or None}``.

    None = must be embedded; a keyword = must be skipped with a reason containing it.
    """
    from PIL import Image

    dst.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str | None] = {}
    for i, f in enumerate(pacs_files):
        name = f"pacs_{i:02d}{f.suffix}"
        shutil.copyfile(f, dst / name)
        expect[name] = None
    jpg = next(f for f in pacs_files if f.suffix == ".jpg")
    photo = Image.open(jpg).convert("RGB")
    jbytes = jpg.read_bytes()

    (dst / "empty.jpg").write_bytes(b"")
    expect["empty.jpg"] = "empty"
    (dst / "notes.jpg").write_text("this is not an image\n" * 20)
    expect["notes.jpg"] = "not an image"
    (dst / "truncated.jpg").write_bytes(jbytes[: len(jbytes) // 2])
    expect["truncated.jpg"] = "truncated"
    (dst / "huge.png").write_bytes(png_header_only(60000, 60000))
    expect["huge.png"] = "too many pixels"

    photo.convert("CMYK").save(dst / "cmyk.jpg", quality=90)
    expect["cmyk.jpg"] = None
    rgba = photo.convert("RGBA")
    a = np.array(rgba)
    a[..., 3] = np.linspace(0, 255, a.shape[1], dtype=np.uint8)[None, :]
    Image.fromarray(a, "RGBA").save(dst / "rgba.png")
    expect["rgba.png"] = None
    photo.convert("P", palette=Image.Palette.ADAPTIVE, colors=64).save(dst / "palette.gif")
    expect["palette.gif"] = None
    gray16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    Image.fromarray(gray16).save(dst / "gray16.png")
    expect["gray16.png"] = None
    (dst / "exif_rotated.jpg").write_bytes(exif_rotated_jpeg(photo.crop((0, 0, 200, 120))))
    expect["exif_rotated.jpg"] = None
    (dst / "jpeg_named.png").write_bytes(jbytes)
    expect["jpeg_named.png"] = None
    photo.convert("L").save(dst / "gray.jpg")
    expect["gray.jpg"] = None
    (dst / "truncated_rows.png").write_bytes(png_rows_cut(40, 4000, rows=10))
    expect["truncated_rows.png"] = "truncated"
    return expect


def png_rows_cut(width: int, height: int, rows: int, value: int = 200) -> bytes:
    """A well-formed RGB PNG (complete zlib stream, IEND) whose pixel data stops after ``rows`` of ``height``
    rows: Pillow alone decodes it without a word, padding the missing rows with black."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    raw = b"".join(b"\x00" + bytes([value]) * (width * 3) for _ in range(rows))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def build_hostile_entries(dst: Path, image: bytes) -> dict[str, str]:
    """Folder entries that must never be opened, under ``dst``; returns ``{relative path: reason keyword}``.

    A FIFO and a Unix socket named like images, a symbolic link loop (``a.jpg -> b.jpg -> a.jpg``), a dangling
    link, a link to a character device, and an unreadable sub-folder (``locked/``, mode 000, holding a real
    image; only unreadable to a non-root user). ``image`` (encoded bytes) also goes in as ``good.jpg``.
    """
    import os
    import socket

    dst.mkdir(parents=True, exist_ok=True)
    (dst / "good.jpg").write_bytes(image)
    os.mkfifo(dst / "fifo.jpg")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(dst / "sock.png"))
    finally:
        sock.close()
    os.symlink("b.jpg", dst / "a.jpg")
    os.symlink("a.jpg", dst / "b.jpg")
    os.symlink("nowhere.jpg", dst / "dangling.jpg")
    os.symlink("/dev/null", dst / "device.jpg")
    locked = dst / "locked"
    locked.mkdir()
    (locked / "inside.jpg").write_bytes(image)
    locked.chmod(0)
    return {"fifo.jpg": "FIFO", "sock.png": "socket", "a.jpg": "loop", "b.jpg": "loop",
            "dangling.jpg": "No such file", "device.jpg": "device", "locked": "cannot list folder"}


def run_tki(argv: list[Any], capsys: Any) -> tuple[int, str, str]:
    """``tki <argv>`` in this process: ``(exit status, stdout, stderr)`` of that call alone."""
    from tki_sdk.cli import main as tki_cli

    capsys.readouterr()
    rc = tki_cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def one_error_line(err: str, prog: str, *, ignore_model_line: bool = False) -> str:
    """The one non-blank line of ``err``, which must read ``<prog>: error: ...`` (the ``model: ...`` status line
    a command prints before loading is skipped with ``ignore_model_line``)."""
    lines = [ln for ln in err.splitlines()
             if ln.strip() and not (ignore_model_line and ln.startswith("model: "))]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"{prog}: error: "), lines
    return lines[0]


#: Python source that makes importing torch, torchvision, open_clip or geoopt raise ImportError (and forgets
#: any already imported): prepended to the scripts the torch-free tests run in a fresh interpreter.
BLOCK_TRAINING_STACK = '''\
import sys
BLOCKED = ("torch", "torchvision", "open_clip", "geoopt")

class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Blocker())
for m in list(sys.modules):
    if m.split(".")[0] in BLOCKED:
        del sys.modules[m]
'''
