"""Torch-free preprocessing equals open_clip's own eval transform; safe loading refuses bad files per file."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import exif_rotated_jpeg, pacs_sample, png_header_only
from tki_sdk.runtime.engine import preprocess as pp
from tki_sdk.runtime.engine.images import ImageLoadError, load_image, to_8bit
from tki_sdk.common.model_metadata import ModelMetadata, PreprocessConfig
from tki_sdk.runtime.engine.preprocess import Preprocessor

# open_clip PreprocessCfg kwargs; our PreprocessConfig takes the same fields (size as (H, W)).
CFGS = {
    "224-bicubic-shortest": dict(size=224, interpolation="bicubic", resize_mode="shortest"),
    "32-bilinear-squash": dict(size=32, interpolation="bilinear", resize_mode="squash"),
    "48x64-shortest": dict(size=(48, 64), interpolation="bilinear", resize_mode="shortest"),
    "40x30-longest-fill": dict(size=(40, 30), interpolation="bicubic", resize_mode="longest", fill_color=128),
    "33-bilinear-longest": dict(size=33, interpolation="bilinear", resize_mode="longest"),
}


def _pair(cfg: dict):
    from open_clip.transform import PreprocessCfg, image_transform_v2

    ref = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    ours = dict(cfg)
    s = ours["size"]
    ours["size"] = (s, s) if isinstance(s, int) else s
    return ref, Preprocessor(PreprocessConfig.from_dict(ours))


def _synthetic(mode: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    if mode == "I;16":
        return Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
    if mode == "I":
        return Image.fromarray(rng.integers(-300, 70000, (h, w), dtype=np.int32), "I")
    if mode == "F":
        return Image.fromarray((rng.random((h, w), dtype=np.float32) * 300 - 20).astype(np.float32), "F")
    if mode == "P":
        return rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=37)
    if mode in ("RGBA", "LA", "PA"):
        base = rgb.convert("RGBA" if mode != "LA" else "LA")
        a = np.array(base)
        a[..., -1] = rng.integers(0, 256, (h, w))
        im = Image.fromarray(a, "RGBA" if mode != "LA" else "LA")
        return im.convert("PA") if mode == "PA" else im
    return rgb.convert(mode)


MODES = ["RGB", "L", "P", "RGBA", "CMYK", "I;16", "LA", "1", "I", "F", "YCbCr", "HSV", "LAB", "PA"]
SIZES = [(1, 1), (3, 500), (500, 3), (31, 33), (227, 227), (640, 480), (1000, 7), (224, 225)]


@pytest.mark.parametrize("name", list(CFGS))
def test_pacs_files_equal_open_clip(pacs_dir, name):
    ref, ours = _pair(CFGS[name])
    files = pacs_sample(pacs_dir, per_class=2, classes=("dog", "guitar", "house"))[::2]
    assert len(files) >= 10 and {f.parts[-3] for f in files} >= {"photo", "sketch", "cartoon", "art_painting"}
    for f in files:
        im = Image.open(f)
        expected = ref(im).numpy()
        got = ours(im)
        assert got.dtype == np.float32 and got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=str(f))


@pytest.mark.parametrize("name", list(CFGS))
def test_every_pillow_mode_and_odd_sizes_equal_open_clip(name):
    ref, ours = _pair(CFGS[name])
    rng = np.random.default_rng(7)
    big_target = name.startswith("224")
    checked = refused = 0
    for mode in MODES:
        # 224 px targets make 3x500 -> 224x37333 intermediates: extreme sizes on a few modes only there
        sizes = SIZES if not big_target or mode in ("RGB", "L", "P") else [(1, 1), (31, 33), (224, 225), (61, 17)]
        for w, h in sizes:
            im = _synthetic(mode, w, h, rng)
            assert im.mode == mode
            got = ours(im)
            try:
                # 16-bit grey is scaled to 8 bits first (open_clip clips it to white): compare on that image
                expected = ref(to_8bit(im)).numpy()
            except ValueError:  # open_clip itself fails (e.g. 'longest' rounds 7 px to 0 rows)
                assert got.shape == (3, *ours.size) and np.isfinite(got).all()
                refused += 1
                continue
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6, err_msg=f"{mode} {w}x{h}")
            checked += 1
    assert checked >= 4 * len(MODES) and refused <= 3 * len(MODES)


def _eight_bit_wide(mode: str, w: int, h: int, rng: np.random.Generator) -> Image.Image:
    """A wide-mode image (``I``, ``I;16``) holding only 8-bit values: what open_clip converts correctly."""
    if mode == "I-convert":  # the reported case: an 8-bit photo through Image.convert("I")
        return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB").convert("I")
    a = rng.integers(0, 256, (h, w))
    if mode == "I;16":
        return Image.fromarray(a.astype(np.uint16))
    yy, xx = np.mgrid[0:h, 0:w]  # a smooth ramp with edges (bicubic overshoots on its steps)
    return Image.fromarray((((xx * 7 + yy * 3) % 256) * (a > 40)).astype(np.int32), "I")


@pytest.mark.parametrize("name", list(CFGS))
def test_wide_modes_with_8bit_values_equal_open_clip_untouched(name, pacs_dir):
    """``I`` / ``I;16`` images whose values fit in 8 bits are what open_clip handles correctly: equal to its
    transform on the very same image (no 16-bit scaling applied to the reference)."""
    ref, ours = _pair(CFGS[name])
    rng = np.random.default_rng(11)
    cases = [(m, _eight_bit_wide(m, w, h, rng)) for m in ("I-convert", "I", "I;16")
             for w, h in ((31, 33), (224, 225), (61, 17), (640, 480))]
    cases += [(f"pacs {f.name} -> I", Image.open(f).convert("L").convert("I"))
              for f in pacs_sample(pacs_dir, per_class=1, classes=("dog",))[:2]]
    for label, im in cases:
        expected = ref(im).numpy()
        np.testing.assert_allclose(ours(im), expected, rtol=0, atol=1e-5, err_msg=f"{label} {im.size}")


def test_only_values_above_255_are_scaled():
    """``to_8bit`` scales a wide image only when it holds a value above 255: round(v * 255 / 65535)."""
    small = Image.fromarray(np.array([[0, 7, 255]], dtype=np.int32), "I")
    assert to_8bit(small) is small
    small16 = Image.fromarray(np.array([[0, 7, 255]], dtype=np.uint16))
    assert np.array_equal(np.asarray(to_8bit(small16).convert("I")), [[0, 7, 255]])
    big = Image.fromarray(np.array([[0, 256, 65535]], dtype=np.uint16))
    out = to_8bit(big)
    assert out.mode == "L" and np.asarray(out).tolist() == [[0, 1, 255]]


def test_from_metadata_accepts_every_form(tmp_path):
    cfg = PreprocessConfig(size=(48, 48), interpolation="bilinear", resize_mode="squash")
    md = ModelMetadata(model_name="m", embedding_dim=4, preprocess=cfg)
    md.save(tmp_path)
    forms = [tmp_path, tmp_path / "tki.json", str(tmp_path), md, cfg, md.to_dict(), cfg.to_dict()]
    im = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    outs = [Preprocessor.from_metadata(f)(im) for f in forms]
    for o in outs[1:]:
        np.testing.assert_array_equal(o, outs[0])
    assert outs[0].shape == (3, 48, 48)
    with pytest.raises(ValueError, match="resize_mode"):
        Preprocessor(PreprocessConfig(resize_mode="stretch"))


def test_batch_equals_stacked_single_calls(pacs_dir):
    pre = Preprocessor(PreprocessConfig(size=(32, 32)))
    files = pacs_sample(pacs_dir, per_class=1)
    items = [files[0], files[1].read_bytes(), Image.open(files[2])]
    batch = pre.batch(items)
    assert batch.shape == (3, 3, 32, 32) and batch.dtype == np.float32
    for i, it in enumerate(items):
        np.testing.assert_array_equal(batch[i], pre.process(it))
    np.testing.assert_array_equal(batch[0], pre(Image.open(files[0])))


def test_exif_transpose_is_opt_in():
    rng = np.random.default_rng(1)
    base = Image.fromarray(rng.integers(0, 256, (60, 90, 3), dtype=np.uint8))
    data = exif_rotated_jpeg(base, orientation=6)  # 90 degrees: stored 90x60, shown 60x90
    pre = Preprocessor(PreprocessConfig(size=(32, 32)))
    pre_t = Preprocessor(PreprocessConfig(size=(32, 32)), exif_transpose=True)
    raw = Image.open(io.BytesIO(data))
    raw.load()
    np.testing.assert_array_equal(pre.process(data), pre(raw))  # default: pixels as stored, like open_clip
    rotated = raw.transpose(Image.Transpose.ROTATE_270)
    np.testing.assert_array_equal(pre_t.process(data), pre(rotated))
    assert not np.allclose(pre_t.process(data), pre.process(data))


def test_draft_mode_decodes_large_jpegs_at_reduced_scale(pacs_dir):
    photo = Image.open(pacs_sample(pacs_dir, 1, domains=("photo",))[0]).convert("RGB").resize((1000, 800))
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=95)
    data = buf.getvalue()
    exact = Preprocessor(PreprocessConfig(size=(224, 224)))
    draft = Preprocessor(PreprocessConfig(size=(224, 224)), draft=True)
    assert exact.load(data).size == (1000, 800)
    # resize output is 280x224, so the decoder may halve (500x400) but not quarter (250x200 < 280x224)
    assert draft.load(data).size == (500, 400)
    a, b = exact.process(data), draft.process(data)
    assert np.abs(a - b).mean() < 0.05  # close (a few grey levels), not identical
    assert not np.array_equal(a, b)
    small = Image.open(pacs_sample(pacs_dir, 1)[0])  # 227 px: less than 2x the target, draft changes nothing
    buf = io.BytesIO()
    small.convert("RGB").save(buf, format="JPEG")
    np.testing.assert_array_equal(exact.process(buf.getvalue()), draft.process(buf.getvalue()))


def test_decompression_bomb_refused_from_header_without_allocating():
    data = png_header_only(60000, 60000)
    t = time.perf_counter()
    with pytest.raises(ImageLoadError, match="too many pixels"):
        load_image(data)
    assert time.perf_counter() - t < 10.0  # allocating and inflating 10.8 GB of RGB would take minutes
    # the limit is per call: a 120x100 image under a 10,000-pixel limit is refused by our own check
    buf = io.BytesIO()
    Image.new("RGB", (120, 100)).save(buf, format="PNG")
    with pytest.raises(ImageLoadError, match="120 x 100 = 12,000 > max_pixels 10,000"):
        load_image(buf.getvalue(), max_pixels=10_000)
    assert load_image(buf.getvalue(), max_pixels=12_000).size == (120, 100)
    pre = Preprocessor(PreprocessConfig(size=(32, 32)), max_pixels=10_000)
    with pytest.raises(ImageLoadError, match="too many pixels"):
        pre.process(buf.getvalue())


def test_bomb_message_quotes_the_configured_limit_not_pillows():
    """A header far over Pillow's own hard limit (2 x MAX_IMAGE_PIXELS) is refused quoting the caller's limit."""
    data = png_header_only(50000, 50000)
    pillow_hard = 2 * int(Image.MAX_IMAGE_PIXELS)
    for limit in (40_000_000, 1_000):
        with pytest.raises(ImageLoadError) as e:
            load_image(data, max_pixels=limit)
        msg = str(e.value)
        assert f"2,500,000,000 > max_pixels {limit:,}" in msg, msg
        assert f"{pillow_hard}" not in msg and f"{pillow_hard:,}" not in msg, msg
        assert "\n" not in msg


def test_load_image_names_each_failure(tmp_path, pacs_dir):
    jpg = pacs_sample(pacs_dir, 1, domains=("photo",))[0].read_bytes()
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello\n" * 10)
    (tmp_path / "cut.jpg").write_bytes(jpg[: len(jpg) // 3])
    (tmp_path / "sub").mkdir()
    cases = {
        tmp_path / "empty.jpg": "empty file",
        tmp_path / "text.jpg": "not an image",
        tmp_path / "cut.jpg": "truncated",
        tmp_path / "missing.jpg": "no such file",
        tmp_path / "sub": "is a directory",
        b"": "empty file",
        b"GIF89a\x00": "not an image",
    }
    for item, reason in cases.items():
        with pytest.raises(ImageLoadError) as ei:
            load_image(item)
        assert reason in ei.value.reason, (item, ei.value.reason)
        assert ei.value.item is item
    with pytest.raises(ImageLoadError, match="unsupported input type"):
        load_image(12345)  # type: ignore[arg-type]
    im = load_image(jpg)
    assert im.size == (227, 227) and im.mode == "RGB"


def test_pathological_strip_resizes_only_the_kept_region(monkeypatch):
    """Above MAX_RESIZE_PIXELS only the cropped part is resized: bounded memory, close to the full resize."""
    rng = np.random.default_rng(3)
    im = Image.fromarray(rng.integers(0, 256, (400, 20, 3), dtype=np.uint8))  # 20 wide, 400 tall
    pre = Preprocessor(PreprocessConfig(size=(32, 32)))
    full = pre(im)  # 32 x 640 intermediate: under the limit, exact path
    monkeypatch.setattr(pp, "MAX_RESIZE_PIXELS", 1000)
    boxed = pre(im)
    assert boxed.shape == full.shape
    assert np.abs(boxed - full).mean() < 0.02  # Pillow rounds the box to float32: close, not bit-equal
    strip = Image.new("L", (1, 60000), 128)  # full resize would be 32 x 1,920,000
    out = pre(strip)
    assert out.shape == (3, 32, 32) and np.isfinite(out).all()
