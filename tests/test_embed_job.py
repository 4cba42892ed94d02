"""``tki embed`` without the CLI: ``embed_folder(EmbedConfig)`` runs the same job and returns its report;
the config owns defaults and bounds and its errors name the field (the CLI names the flag).

References: a gallery built by the ``tki embed`` command of the same folder (keys, metadata, vectors); the
tiny model in float64 numpy (``tiny_reference``) for the vectors; the dataclass defaults themselves.
"""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from runtime_fixtures import make_tiny_export, tiny_reference
from tki_sdk.cli.runtime import EMBED_FLAGS, _add_embed, embed_config, main
from tki_sdk.cli.base import OneLineParser
from tki_sdk.runtime import Gallery, Preprocessor
from tki_sdk.runtime.pipeline.config import EmbedConfig
from tki_sdk.runtime.pipeline.embed_run import JobReport
from tki_sdk.common.errors import ConfigError
from tki_sdk.runtime.pipeline.errors import PipelineError
from tki_sdk.runtime.pipeline.ingest import item_key
from tki_sdk.runtime.pipeline.job import embed_folder


def _images(folder: Path, n: int) -> Path:
    for i in range(n):
        rgb = (np.random.default_rng(i).random((40, 48, 3)) * 255).astype(np.uint8)
        (folder / "photo" / "dog").mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, "PNG")
        (folder / "photo" / "dog" / f"{i:02d}.png").write_bytes(buf.getvalue())
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    return make_tiny_export(tmp_path_factory.mktemp("m") / "tiny")


def test_embed_folder_runs_the_cli_job_and_returns_its_report(export, tmp_path, capsys):
    model, weights = export
    images = _images(tmp_path / "img", 6)
    cfg = EmbedConfig(images=images, out=tmp_path / "lib", model=model, batch_size=4, threads=1, exact=True)
    rep = embed_folder(cfg)
    assert capsys.readouterr() == ("", "")  # the library prints nothing
    assert isinstance(rep, JobReport) and rep.added == 6 and rep.listed == 6 and rep.failed == [] and rep.saved
    assert main(["embed", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "cli"),
                 "--batch-size", "4", "--threads", "1", "--exact"]) == 0
    lib, cli = Gallery.load(tmp_path / "lib"), Gallery.load(tmp_path / "cli")
    keys = np.sort(lib.keys())
    np.testing.assert_array_equal(keys, np.sort(cli.keys()))
    assert sorted(keys.tolist()) == sorted(item_key(f"photo/dog/{i:02d}.png") for i in range(6))
    assert lib.get_metadata(keys) == cli.get_metadata(keys)
    files = [m["path"] for m in lib.get_metadata(keys)]
    ref = tiny_reference(Preprocessor.from_metadata(model).batch(files), weights)
    np.testing.assert_allclose(lib.get_vectors(keys), ref, atol=1e-5)
    again = embed_folder(cfg)  # incremental: nothing to do
    assert (again.added, again.unchanged, again.embedded, again.saved) == (0, 6, 0, False)


@pytest.mark.parametrize("field, value, words", [
    ("batch_size", 0, "must be >= 1"), ("batch_size", 10**8, "must be at most"), ("workers", 0, "must be >= 1"),
    ("every", 0, "must be >= 1"), ("seconds", 0.0, "must be > 0"), ("connectivity", 1, "must be >= 2"),
    ("target_recall", 1.5, "between 0 and 1"), ("dtype", "f64", "must be one of"), ("actors", 2, "ray engine"),
    ("cpus_per_actor", 0.0, "must be > 0"),
])
def test_config_errors_name_the_field_and_the_cli_names_the_flag(export, tmp_path, capsys, field, value, words):
    model, _ = export
    images = _images(tmp_path / "img", 1)
    cfg = EmbedConfig(images=images, out=tmp_path / "g", model=model, **{field: value})
    with pytest.raises(ConfigError) as e:
        embed_folder(cfg)
    assert e.value.field == field and str(e.value).startswith(f"{field} ") and words in str(e.value)
    flag = EMBED_FLAGS[field]
    argv = ["embed", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "g"), flag, str(value)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    if field == "dtype":  # argparse's choices refuse it first, naming the flag too
        assert len(err) == 1 and f"argument {flag}: invalid choice" in err[0], err
    else:
        assert len(err) == 1 and f"error: {flag} " in err[0] and words in err[0], err
    assert not (tmp_path / "g").exists()


def test_cli_defaults_are_the_config_defaults(tmp_path):
    parser = OneLineParser(prog="tki")
    _add_embed(parser.add_subparsers(dest="command", parser_class=OneLineParser))
    args = parser.parse_args(["embed", "--model", "m", "--images", "i", "--out", "o"])
    built = embed_config(args)
    want = EmbedConfig(images=Path("i"), out=Path("o"), model=Path("m"), progress=True)
    assert built == want
    assert set(EMBED_FLAGS) == {f.name for f in dataclasses.fields(EmbedConfig)} - {"progress"}


def test_pipeline_errors_are_its_own_and_one_line(export, tmp_path):
    model, _ = export
    with pytest.raises(PipelineError) as e:
        embed_folder(EmbedConfig(images=tmp_path / "missing", out=tmp_path / "g", model=model))
    assert "images" in str(e.value) and "\n" not in str(e.value) and e.value.code == 2


def test_tki_index_names_the_gallery_flag_when_the_gallery_path_cannot_be_written(tmp_path, capsys):
    """A --gallery under a plain file is refused in one line naming --gallery (it used to name --out)."""
    from tki_sdk.cli.runtime import main

    shards = tmp_path / "shards"
    shards.mkdir()
    (shards / "part-00000.parquet").write_bytes(b"")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    code = main(["index", "--from-parquet", str(shards), "--gallery", str(blocker / "g")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "--gallery" in err[0] and "--out" not in err[0], err


def test_missing_ray_is_one_line_exit_3_naming_the_extra(export, tmp_path, capsys, monkeypatch):
    """``--engine ray`` without Ray: the library raises the project's one MissingExtraError (naming the extra),
    ``tki embed`` prints one line and exits 3; nothing is written."""
    import sys

    from tki_sdk.common.extras import MissingExtraError

    model, _ = export
    images = _images(tmp_path / "img", 2)
    monkeypatch.setitem(sys.modules, "ray", None)  # ``import ray`` now raises ImportError
    with pytest.raises(MissingExtraError) as e:
        embed_folder(EmbedConfig(images=images, out=tmp_path / "g", model=model, engine="ray"))
    assert e.value.extra == "distributed"
    argv = ["embed", "--model", str(model), "--images", str(images), "--out", str(tmp_path / "g2"), "--engine", "ray"]
    assert main(argv) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tki embed: error:") and "tki-sdk[distributed]" in err[0], err
    assert not (tmp_path / "g").exists() and not (tmp_path / "g2").exists()
