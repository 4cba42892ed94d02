"""Domain/class folder reader on temporary trees (both layouts) and on the PACS copy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tki_sdk.benchmarks.datasets import DomainDataset, cross_domain_pairs, find_dataset_root


def _make_tree(root: Path) -> dict[str, dict[str, int]]:
    layout = {
        "photo": {"dog": 3, "cat": 2, "zebra": 4},
        "sketch": {"dog": 1, "cat": 5},  # no zebra in sketch
    }
    for domain, classes in layout.items():
        for cls, n in classes.items():
            d = root / domain / cls
            d.mkdir(parents=True)
            for i in range(n):
                (d / f"img{i:02d}.{'png' if domain == 'sketch' else 'JPG'}").write_bytes(b"x")
            (d / "notes.txt").write_text("not an image")
            (d / ".hidden.jpg").write_bytes(b"x")
    (root / ".cache" / "x").mkdir(parents=True)  # hidden folder, skipped
    (root / "empty_domain" / "dog").mkdir(parents=True)  # no images: not a domain
    return layout


@pytest.mark.parametrize("images_level", [False, True])
def test_tree_both_layouts(tmp_path, images_level):
    base = tmp_path / "images" if images_level else tmp_path
    layout = _make_tree(base)
    ds = DomainDataset(tmp_path)
    assert ds.root == base
    assert ds.domains == ["photo", "sketch"]
    assert ds.classes == ["cat", "dog", "zebra"]  # sorted union, shared index
    assert ds.counts() == {"photo": 9, "sketch": 6}
    assert ds.class_counts("sketch") == {"cat": 5, "dog": 1, "zebra": 0}
    for domain, classes in layout.items():
        recs = ds.records(domain)
        assert len(recs) == sum(classes.values())
        for r in recs:
            assert r.path.parent.name == r.class_name
            assert ds.classes[r.label] == r.class_name
            assert r.path.suffix.lower() in (".png", ".jpg")
        np.testing.assert_array_equal(ds.labels(domain), [r.label for r in recs])
        assert ds.paths(domain) == sorted(ds.paths(domain), key=lambda p: (p.parent.name, p.name))
    assert ds.pairs() == [("photo", "sketch"), ("sketch", "photo")]


def test_sampling_is_deterministic_and_per_class(tmp_path):
    _make_tree(tmp_path)
    ds = DomainDataset(tmp_path)
    a = ds.sample(2, seed=7)
    b = ds.sample(2, seed=7)
    assert [r.path for r in a.records()] == [r.path for r in b.records()]
    assert a.class_counts("photo") == {"cat": 2, "dog": 2, "zebra": 2}
    assert a.class_counts("sketch") == {"cat": 2, "dog": 1, "zebra": 0}  # fewer than 2: all kept
    assert a.classes == ds.classes and a.domains == ds.domains
    # The choice inside one (domain, class) does not depend on the other domains present.
    only_photo = DomainDataset(tmp_path, domains=["photo"]).sample(2, seed=7)
    assert [r.path for r in only_photo.records()] == [r.path for r in a.records("photo")]
    # Some seed picks a different subset of photo/zebra (4 choose 2 = 6 subsets).
    picks = {tuple(r.path.name for r in ds.sample(2, seed=s).records("photo") if r.class_name == "zebra") for s in range(10)}
    assert len(picks) > 1
    assert len(ds.sample(None)) == len(ds)
    with pytest.raises(ValueError):
        ds.sample(0)


def test_errors_name_the_layout(tmp_path):
    with pytest.raises(FileNotFoundError):
        find_dataset_root(tmp_path / "missing")
    (tmp_path / "a" / "b").mkdir(parents=True)
    with pytest.raises(ValueError, match="<domain>/<class>"):
        DomainDataset(tmp_path)
    _make_tree(tmp_path / "ok")
    with pytest.raises(ValueError, match="unknown domain"):
        DomainDataset(tmp_path / "ok", domains=["clipart"])


def test_cross_domain_pairs():
    assert cross_domain_pairs(["a", "b", "c"]) == [("a", "b"), ("a", "c"), ("b", "a"), ("b", "c"), ("c", "a"), ("c", "b")]
    assert cross_domain_pairs(["a"]) == []


def test_pacs_counts(pacs_dir):
    ds = DomainDataset(pacs_dir)
    if pacs_dir.name == "images":  # the <root>/images/<domain>/... layout is found from <root> too
        assert DomainDataset(pacs_dir.parent, domains=["photo"]).counts() == {"photo": 1670}
    assert ds.counts() == {"art_painting": 2048, "cartoon": 2344, "photo": 1670, "sketch": 3929}
    assert ds.classes == ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
    assert len(ds.pairs()) == 12
    s = ds.sample(3, seed=0)
    assert s.counts() == {d: 21 for d in ds.domains}
    assert all(r.path.is_file() for r in s.records())


def test_gallery_dataset_and_gpu_suite_see_the_same_image_files(tmp_path):
    """One suffix set: what ``tki embed`` indexes is what the accuracy benchmark and the GPU suite read."""
    from PIL import Image

    from tki_sdk.benchmarks.gpu_throughput import pick_files
    from tki_sdk.runtime.pipeline.ingest import scan_image_folder
    from tki_sdk.runtime.engine.images import IMAGE_SUFFIXES, load_image

    folder = tmp_path / "photo" / "dog"
    folder.mkdir(parents=True)
    im = Image.new("RGB", (8, 8), (10, 200, 30))
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".jpe": "JPEG", ".jfif": "JPEG", ".png": "PNG", ".gif": "GIF",
           ".bmp": "BMP", ".tif": "TIFF", ".tiff": "TIFF", ".webp": "WEBP", ".ppm": "PPM", ".pgm": "PPM",
           ".pbm": "PPM", ".pnm": "PPM"}
    assert set(fmt) == set(IMAGE_SUFFIXES)
    for i, (suffix, f) in enumerate(sorted(fmt.items())):
        mode = {".pgm": "L", ".pbm": "1"}.get(suffix, "RGB")
        im.convert(mode).save(folder / f"img{i}{suffix.upper() if i % 2 else suffix}", format=f)
    (folder / "notes.txt").write_text("not an image")
    (folder / "vector.svg").write_text("<svg/>")
    im.save(folder / ".hidden.jpg", format="JPEG")

    indexed = sorted(p.name for p, _ in scan_image_folder(tmp_path))
    assert len(indexed) == len(IMAGE_SUFFIXES)
    assert sorted(r.path.name for r in DomainDataset(tmp_path).records()) == indexed
    assert sorted(p.name for p in pick_files(tmp_path, 100)) == indexed
    for name in indexed:  # every indexed suffix decodes
        assert load_image(folder / name).size == (8, 8)


def test_default_dataset_dir_env_then_repository_relative(tmp_path, monkeypatch):
    import tki_sdk.benchmarks.datasets as ds

    monkeypatch.setenv("TKI_PACS_DIR", str(tmp_path))
    assert ds.default_dataset_dir() == tmp_path
    monkeypatch.setenv("TKI_PACS_DIR", str(tmp_path / "missing"))
    assert ds.default_dataset_dir() is None  # a set variable is not silently replaced
    monkeypatch.delenv("TKI_PACS_DIR")
    repo = Path(ds.__file__).resolve().parents[3]
    want = (repo.parent / "shared" / "data" / "pacs" / "images").resolve()
    assert ds.default_dataset_dir() == (want if want.is_dir() else None)


def test_benchmarks_carry_no_absolute_dataset_paths():
    import tki_sdk.benchmarks.accuracy as acc
    import tki_sdk.benchmarks.datasets as ds
    import tki_sdk.benchmarks.gpu_throughput as gt

    for mod in (acc, ds, gt):
        text = Path(mod.__file__).read_text()
        assert "/work/" not in text and "TKI_DATASET_DIR" not in text, mod.__name__


def test_suites_use_the_default_dataset_dir(tmp_path, monkeypatch):
    from tki_sdk.benchmarks.datasets import dataset_dir

    monkeypatch.setenv("TKI_PACS_DIR", str(tmp_path))
    assert dataset_dir(None, required_by="accuracy") == tmp_path
    assert dataset_dir(None) == tmp_path
    given = tmp_path / "given"
    given.mkdir()
    assert dataset_dir(given, required_by="accuracy") == given
    monkeypatch.setenv("TKI_PACS_DIR", str(tmp_path / "missing"))
    assert dataset_dir(None) is None
    from tki_sdk.common.errors import UsageError

    with pytest.raises(UsageError, match="TKI_PACS_DIR"):
        dataset_dir(None, required_by="accuracy")


# -- the paper's datasets in their published layouts -----------------------------------------------------------


def _office_home(root: Path) -> dict[str, dict[str, int]]:
    """Office-Home as published: OfficeHomeDataset_10072016/{Art,Clipart,Product,Real World}/<Class>/NNNNN.jpg
    plus ImageInfo.csv and imagelist.txt at the top."""
    top = root / "OfficeHomeDataset_10072016"
    layout = {"Art": {"Alarm_Clock": 2, "Bike": 3}, "Clipart": {"Alarm_Clock": 1, "Bike": 2},
              "Product": {"Alarm_Clock": 2, "Bike": 1}, "Real World": {"Alarm_Clock": 3, "Bike": 2}}
    for domain, classes in layout.items():
        for cls, n in classes.items():
            (top / domain / cls).mkdir(parents=True)
            for i in range(n):
                (top / domain / cls / f"{i + 1:05d}.jpg").write_bytes(b"x")
    (top / "ImageInfo.csv").write_text("image,license\n")
    (top / "imagelist.txt").write_text("")
    return layout


def test_office_home_published_layout(tmp_path):
    from tki_sdk.benchmarks.datasets import read_dataset

    layout = _office_home(tmp_path)
    for root in (tmp_path, tmp_path / "OfficeHomeDataset_10072016"):  # the download folder or the one inside
        ds = read_dataset("officehome", root)
        assert ds.domains == ["Art", "Clipart", "Product", "Real World"]  # the paper's A, C, P, R
        assert ds.classes == ["Alarm_Clock", "Bike"]
        assert ds.counts() == {d: sum(c.values()) for d, c in layout.items()}
        assert list(ds.labels("Real World")) == [0, 0, 0, 1, 1]
    (tmp_path / "OfficeHomeDataset_10072016" / "Product").rename(tmp_path / "OfficeHomeDataset_10072016" / "Prod")
    with pytest.raises(ValueError, match="Product"):
        read_dataset("officehome", tmp_path)


_DN = {"clipart": {"aircraft_carrier": 3, "zebra": 2}, "real": {"aircraft_carrier": 2, "zebra": 4},
       "sketch": {"aircraft_carrier": 2, "zebra": 2}}


def _domainnet(root: Path, lists: bool = True) -> dict[str, dict[str, list[str]]]:
    """DomainNet as published: <domain>/<class>/<domain>_<class idx>_<n>.jpg and the official split lists
    <domain>_train.txt / <domain>_test.txt, lines '<domain>/<class>/<file> <label>'. Here the last image of
    every (domain, class) is in the test list, the others in the train list."""
    split: dict[str, dict[str, list[str]]] = {}
    for domain, classes in _DN.items():
        split[domain] = {"train": [], "test": []}
        for label, (cls, n) in enumerate(sorted(classes.items())):
            (root / domain / cls).mkdir(parents=True)
            for i in range(n):
                rel = f"{domain}/{cls}/{domain}_{label + 1:03d}_{i:06d}.jpg"
                (root / rel).write_bytes(b"x")
                split[domain]["test" if i == n - 1 else "train"].append(f"{rel} {label}")
        if lists:
            for part, entries in split[domain].items():
                (root / f"{domain}_{part}.txt").write_text("\n".join(entries) + "\n")
    return split


def test_domainnet_published_layout_with_official_splits(tmp_path):
    from tki_sdk.benchmarks.datasets import read_dataset

    split = _domainnet(tmp_path)
    test = read_dataset("domainnet", tmp_path, split="test")
    assert test.domains == ["real", "sketch", "clipart"]  # the paper's order (Real, Sketch, ..., Clipart)
    assert test.classes == ["aircraft_carrier", "zebra"]
    assert test.counts() == {"real": 2, "sketch": 2, "clipart": 2}  # one test image per (domain, class)
    for d in test.domains:
        listed = [line.split()[0] for line in split[d]["test"]]
        assert [str(p.relative_to(tmp_path)) for p in test.paths(d)] == listed
        assert list(test.labels(d)) == [int(line.split()[1]) for line in split[d]["test"]]
    train = read_dataset("domainnet", tmp_path, split="train")
    assert train.counts() == {d: sum(c.values()) - len(c) for d, c in [(d, _DN[d]) for d in train.domains]}
    whole = read_dataset("domainnet", tmp_path, split="all")
    assert whole.counts() == {d: sum(_DN[d].values()) for d in whole.domains}


def test_domainnet_split_errors_are_one_line(tmp_path):
    from tki_sdk.benchmarks.datasets import read_dataset

    _domainnet(tmp_path, lists=False)
    with pytest.raises(ValueError, match="split") as e:
        read_dataset("domainnet", tmp_path, split="test")
    assert "\n" not in str(e.value) and "--split all" in str(e.value)
    read_dataset("domainnet", tmp_path, split="all")  # the folders alone are enough for "all"
    (tmp_path / "real_test.txt").write_text("real/zebra/missing.jpg 1\n")
    (tmp_path / "sketch_test.txt").write_text("")
    (tmp_path / "clipart_test.txt").write_text("clipart/zebra/clipart_002_000000.jpg 0\n")  # label disagrees
    with pytest.raises(ValueError, match="missing.jpg"):
        read_dataset("domainnet", tmp_path, split="test")
    (tmp_path / "real_test.txt").write_text("real/zebra/real_002_000000.jpg 1\n")
    with pytest.raises(ValueError, match="label"):
        read_dataset("domainnet", tmp_path, split="test")


def test_pacs_reader_is_the_folder_reader(tmp_path):
    from tki_sdk.benchmarks.datasets import read_dataset

    _make_tree(tmp_path / "images")
    assert read_dataset("pacs", tmp_path).counts() == DomainDataset(tmp_path).counts()
    with pytest.raises(ValueError, match="pacs, officehome, domainnet"):
        read_dataset("imagenet", tmp_path)
