"""Hardening of galleries on disk: a damaged-gallery matrix, checksums in gallery.json, exclusive creation, disk full.

On b391247 a truncated, emptied, deleted, garbage or bit-flipped gallery file gave usearch ``RuntimeError``,
``sqlite3`` or ``KeyError`` tracebacks, a segmentation fault (4 KB flipped inside ``index.usearch``) or ``nan``
distances with exit 0; ``tki info`` printed "damaged" and exited 0; two creators of one new gallery both
"won"; a full disk ended in a ``RuntimeError`` traceback. Each test here failed there.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gallery_keys import random_keys
from runtime_fixtures import copy_tree_sample, make_tiny_export, one_error_line, pacs_sample, run_tki
from tki_sdk.common.errors import EXIT_DAMAGED, EXIT_FAILED
from tki_sdk.common.gallery_manifest import GalleryManifest
from tki_sdk.runtime.index import store as gallery_store
from tki_sdk.runtime.engine.embedder import Embedder
from tki_sdk.runtime.index.gallery import Gallery
from tki_sdk.runtime.index.store import GalleryDamagedError, GalleryExistsError, read_current
from tki_sdk.runtime.pipeline.ingest import gallery_options

KINDS = {"hnsw": {"index": "usearch"}, "exact": {"exact": True}, "i8": {"dtype": "i8"}, "hnswlib": {"index": "hnswlib"},
         "faiss": {"index": "faiss"}}
DAMAGES = ("truncate", "empty", "delete", "garbage", "flip")


def damage(path: Path, how: str, seed: int = 1) -> None:
    """Damage one file: cut to half, empty, delete, replace by random bytes of the same size, or overwrite
    min(4 KB, a quarter) of its middle with random bytes."""
    rng = np.random.default_rng(seed)
    b = path.read_bytes()
    if how == "truncate":
        path.write_bytes(b[: len(b) // 2])
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    elif how == "garbage":
        path.write_bytes(rng.bytes(len(b)))
    elif how == "flip":
        n = max(1, min(4096, len(b) // 4))
        s = len(b) // 2 - n // 2
        mid = bytes(x ^ 0xFF for x in b[s : s + n])  # every byte changes
        path.write_bytes(b[:s] + mid + b[s + n :])
    else:  # pragma: no cover
        raise ValueError(how)


@pytest.fixture(scope="module")
def built(tmp_path_factory, pacs_dir):
    """The tiny model, one query image, and one saved gallery of each kind (real embeddings of PACS files)."""
    root = tmp_path_factory.mktemp("damaged")
    export, _ = make_tiny_export(root / "export")
    files = copy_tree_sample(pacs_sample(pacs_dir, per_class=2), pacs_dir, root / "imgs")
    emb = Embedder(export, threads=1)
    res = emb.embed_images(files)
    keys = random_keys(len(files), seed=21)  # file i is stored under keys[i], not under i
    out = {}
    for name, kw in KINDS.items():
        g = Gallery(**gallery_options(emb, **kw))
        g.add(keys[res.indices], res.embeddings, [{"path": str(files[i]), "class": "c"} for i in res.indices])
        g.save(root / name)
        out[name] = root / name
    return root, export, files[0], out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_manifest_records_sizes_and_sha256_of_every_file(built):
    from tki_sdk.common.atomic import sha256_file

    for name, g in built[3].items():
        d = read_current(g)
        m = GalleryManifest.load(d)
        on_disk = {p.name for p in d.iterdir()} - {"gallery.json"}
        assert set(m.files) == on_disk, name
        for fname, rec in m.files.items():
            assert rec == {"bytes": (d / fname).stat().st_size, "sha256": sha256_file(d / fname)}


def test_galleries_without_checksums_still_load(built, tmp_path):
    g = _copy(built[3]["hnsw"], tmp_path / "old")
    d = read_current(g)
    doc = json.loads((d / "gallery.json").read_text())
    del doc["files"]
    (d / "gallery.json").write_text(json.dumps(doc))
    ref = Gallery.load(built[3]["hnsw"])
    old = Gallery.view(g, verify="sha256")
    first = random_keys(len(ref), seed=21)[:1]
    q = ref.get_vectors(first)
    np.testing.assert_array_equal(old.search(q, 5)[0], ref.search(q, 5)[0])
    assert old.search(q, 1)[0][0, 0] == first[0]
    # and an old gallery whose metadata was emptied is still refused, by the item count
    (d / "meta.sqlite").write_bytes(b"")
    with pytest.raises(GalleryDamagedError, match="meta.sqlite"):
        Gallery.view(g)


def _cases():
    files = {"hnsw": ["gallery.json", "index.usearch", "meta.sqlite"],
             "exact": ["gallery.json", "keys.npy", "vectors.npy", "meta.sqlite"],
             "i8": ["gallery.json", "index.usearch", "keys.npy", "vectors.npy", "meta.sqlite"],
             "hnswlib": ["gallery.json", "index.hnswlib", "index.hnswlib.keys.npy", "meta.sqlite"],
             "faiss": ["gallery.json", "index.faiss", "index.faiss.slots.npy", "meta.sqlite"]}
    return [(k, f, d) for k, fs in files.items() for f in fs for d in DAMAGES]


@pytest.mark.parametrize("kind,fname,how", _cases())
def test_damaged_gallery_matrix(built, tmp_path, capsys, kind, fname, how):
    """Every file x every damage: one line naming the file, exit 4, never a traceback, crash or NaN."""
    root, export, query, galleries = built
    g = _copy(galleries[kind], tmp_path / "g")
    damage(read_current(g) / fname, how)
    with pytest.raises(GalleryDamagedError, match=fname.replace(".", r"\.")) as e:
        Gallery.load(g, verify="sha256")
    assert "\n" not in str(e.value) and "tki embed" in str(e.value)
    rc, out, err = run_tki(["info", "--verify", g], capsys)
    assert rc == EXIT_DAMAGED and fname in one_error_line(err, "tki info")
    # tki search; for the native index in a child process, so that a crash there would show as a failure here
    if fname.startswith("index."):
        rc, out, err = subprocess_search(g, export, query)
    else:
        rc, out, err = run_tki(["search", "--gallery", g, "--model", export, "--image", query, "-k", 5], capsys)
        err = "\n".join(ln for ln in err.splitlines() if not ln.startswith("model: "))
    assert rc == EXIT_DAMAGED, (rc, out, err)
    assert fname in one_error_line(err, "tki search") and "nan" not in out


def subprocess_search(g: Path, export: Path, query: Path) -> tuple[int, str, str]:
    r = subprocess.run([sys.executable, "-m", "tki_sdk.cli.main", "search", "--gallery", str(g), "--model", str(export),
                        "--image", str(query), "-k", "5"], capture_output=True, text=True, timeout=120)
    err = "\n".join(ln for ln in r.stderr.splitlines() if not ln.startswith("model: "))
    return r.returncode, r.stdout, err


@pytest.mark.parametrize("how", ["truncate", "empty", "delete"])
def test_size_check_alone_catches_cut_files(built, tmp_path, how):
    for kind, g0 in built[3].items():
        for fname in GalleryManifest.load(read_current(g0)).files:
            g = _copy(g0, tmp_path / f"{kind}-{fname}")
            damage(read_current(g) / fname, how)
            with pytest.raises(GalleryDamagedError, match=fname.replace(".", r"\.")):
                Gallery.view(g, verify="size")


def test_current_damaged_and_manifest_shapes(built, tmp_path, capsys):
    g0 = built[3]["hnsw"]
    cases = {
        "current-missing-version": lambda g: (g / "CURRENT").write_text("v-nothing\n"),
        "current-garbage": lambda g: (g / "CURRENT").write_bytes(b"\x00\xff../x"),
        "manifest-list": lambda g: (read_current(g) / "gallery.json").write_text("[1, 2]"),
        "manifest-no-ndim": lambda g: _edit_manifest(g, lambda d: d.pop("ndim")),
        "manifest-files-wrong-type": lambda g: _edit_manifest(g, lambda d: d.__setitem__("files", [1])),
    }
    for name, hurt in cases.items():
        g = _copy(g0, tmp_path / name)
        hurt(g)
        with pytest.raises(GalleryDamagedError):
            Gallery.view(g)
        rc, out, err = run_tki(["info", g], capsys)
        assert rc == EXIT_DAMAGED, (name, out, err)
        one_error_line(err, "tki info")


def _edit_manifest(g: Path, fn) -> None:
    p = read_current(g) / "gallery.json"
    d = json.loads(p.read_text())
    fn(d)
    p.write_text(json.dumps(d))


def test_nan_distances_from_a_consistent_but_poisoned_gallery_are_refused(built, tmp_path):
    """A vectors.npy holding NaN with matching checksums (written by someone else): the search refuses."""
    from tki_sdk.common.atomic import sha256_file

    g = _copy(built[3]["exact"], tmp_path / "g")
    d = read_current(g)
    v = np.load(d / "vectors.npy")
    v[:] = np.nan
    np.save(d / "vectors.npy", v)
    _edit_manifest(g, lambda m: m["files"].__setitem__(
        "vectors.npy", {"bytes": (d / "vectors.npy").stat().st_size, "sha256": sha256_file(d / "vectors.npy")}))
    gal = Gallery.view(g, verify="sha256")
    with pytest.raises(GalleryDamagedError, match="NaN"):
        gal.search(np.ones(gal.ndim, np.float32), 3)


def test_tki_info_verify_passes_on_a_good_gallery_and_export(built, capsys):
    root, export, _, galleries = built
    for g in galleries.values():
        rc, out, err = run_tki(["info", "--verify", g], capsys)
        assert rc == 0 and "verified" in out, err
    rc, out, err = run_tki(["info", "--verify", export], capsys)
    assert rc == 0 and "sha256 ok" in out, err


# ------------------------------------------------------------------------------------------ exclusive creation
#: The keys of every _gallery (random large uint64s); the vectors differ with the seed.
GKEYS = random_keys(10, seed=77)


def _gallery(seed: int) -> Gallery:
    g = Gallery(8, exact=True)
    g.add(GKEYS, np.random.default_rng(seed).standard_normal((10, 8)).astype(np.float32))
    return g


def test_save_without_overwrite_refuses_an_existing_gallery(tmp_path):
    _gallery(0).save(tmp_path / "g")
    before = read_current(tmp_path / "g")
    with pytest.raises(GalleryExistsError, match="--overwrite") as e:
        _gallery(1).save(tmp_path / "g", overwrite=False)
    assert isinstance(e.value, FileExistsError)
    assert read_current(tmp_path / "g") == before
    _gallery(1).save(tmp_path / "g")  # the default still replaces (re-saving a gallery one loaded)
    np.testing.assert_array_equal(Gallery.load(tmp_path / "g").get_vectors(GKEYS[:1]), _gallery(1).get_vectors(GKEYS[:1]))


def test_two_racing_creators_one_wins_the_other_is_refused(tmp_path):
    """Both pass the up-front check (the folder does not exist yet); the loser is refused under the lock."""
    root = tmp_path / "g"
    started = threading.Barrier(2)
    results: dict[int, object] = {}

    def creator(i: int) -> None:
        g = _gallery(i)

        def write(d: Path) -> None:
            time.sleep(0.3)  # hold the lock long enough for the other creator to queue behind it
            with g._lock:
                g._write_version(d)

        started.wait()
        try:
            results[i] = gallery_store.save_version(root, write, overwrite=False)
        except Exception as e:  # noqa: BLE001 - recorded for the assertions
            results[i] = e

    ts = [threading.Thread(target=creator, args=(i,)) for i in (0, 1)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    winners = [i for i, r in results.items() if isinstance(r, Path)]
    losers = [i for i, r in results.items() if isinstance(r, GalleryExistsError)]
    assert len(winners) == 1 and len(losers) == 1, results
    np.testing.assert_array_equal(Gallery.load(root).get_vectors(GKEYS[3:4]), _gallery(winners[0]).get_vectors(GKEYS[3:4]))
    assert len([p for p in root.iterdir() if p.name.startswith(("v-", ".tmp-"))]) == 1


def test_two_racing_processes(tmp_path):
    """Two processes save a new gallery to one path with overwrite=False: exactly one exit 0, one refusal."""
    root, go = tmp_path / "g", tmp_path / "go"
    code = textwrap.dedent(f"""
        import sys, time, numpy as np
        from pathlib import Path
        import tki_sdk.runtime
        from tki_sdk.runtime.index.gallery import Gallery
        from tki_sdk.runtime.index.store import GalleryExistsError
        i = int(sys.argv[1])
        g = Gallery(8, exact=True)
        g.add(np.arange(2000), np.random.default_rng(i).standard_normal((2000, 8)).astype(np.float32))
        Path({str(tmp_path)!r}, f"ready-{{i}}").touch()
        while not Path({str(go)!r}).exists():
            time.sleep(0.005)
        try:
            g.save({str(root)!r}, overwrite=False)
            print("saved", i)
        except GalleryExistsError as e:
            print("refused", e)
            sys.exit(2)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", code, str(i)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (0, 1)]
    deadline = time.time() + 60
    while not all((tmp_path / f"ready-{i}").exists() for i in (0, 1)) and time.time() < deadline:
        time.sleep(0.01)
    go.touch()
    outs = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], (codes, outs)
    assert any("refused" in o and "--overwrite" in o for o, _ in outs)


# ------------------------------------------------------------------------------------------ disk full
@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB tmpfs (root only); skipped with the reason where it cannot be mounted."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({(r.stderr or r.stdout).strip() or r.returncode})")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(mnt: Path, leave: int) -> None:
    st = os.statvfs(mnt)
    free = st.f_bavail * st.f_frsize
    with open(mnt / "filler", "wb") as f:
        f.write(b"\0" * max(0, free - leave))


@pytest.mark.parametrize("what", ["index", "vectors", "metadata"])
def test_disk_full_during_save_is_one_oserror_and_keeps_the_previous_version(small_disk, what):
    prev = _gallery(0)
    prev.save(small_disk / "g")
    rng = np.random.default_rng(0)
    if what == "index":
        big = Gallery(256)
        big.add(random_keys(1500, 9), rng.standard_normal((1500, 256)).astype(np.float32))
    elif what == "vectors":
        big = Gallery(256, exact=True)
        big.add(random_keys(1500, 9), rng.standard_normal((1500, 256)).astype(np.float32))
    else:
        big = Gallery(8, exact=True)
        big.add(random_keys(1500, 9), rng.standard_normal((1500, 8)).astype(np.float32),
                [{"path": "x" * 1000 + str(i)} for i in range(1500)])
    with pytest.raises(OSError) as e:
        big.save(small_disk / "g")
    msg = str(e.value)
    assert "\n" not in msg and "previous version" in msg and ("space" in msg or "full" in msg), msg
    back = Gallery.load(small_disk / "g", verify="sha256")
    np.testing.assert_array_equal(back.get_vectors(GKEYS), prev.get_vectors(GKEYS))
    assert not [p for p in (small_disk / "g").iterdir() if p.name.startswith(".tmp-")]


def test_tki_embed_on_a_full_disk_is_one_line_and_keeps_the_gallery(small_disk, built, capsys):
    root, export, _, _ = built
    imgs = root / "imgs"
    out = small_disk / "g"
    rc, _, err = run_tki(["embed", "--model", export, "--images", imgs, "--out", out, "--threads", 1], capsys)
    assert rc == 0, err
    before = Gallery.load(out)
    _fill(small_disk, 2048)
    rc, _, err = run_tki(["embed", "--model", export, "--images", imgs, "--out", out, "--threads", 1, "--overwrite",
                      "--exact"], capsys)
    assert rc == EXIT_FAILED
    errors = [ln for ln in err.splitlines() if "error" in ln]
    assert len(errors) == 1 and "cannot write gallery" in errors[0] and "Traceback" not in err, err
    after = Gallery.load(out, verify="sha256")
    assert not after.exact and len(after) == len(before)
