"""tki-export --embedding ball: tki.json records the raw ball point and the Poincaré metric, the runtime
Embedder returns the torch head's raw output, and a gallery built from it ranks by exact Poincaré distance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from export_fixtures import image_folder, torch_float64
from tki_sdk.cli import export as cli
from tki_sdk.export.fused import load_model
from tki_sdk.common.model_metadata import ModelMetadata


@pytest.fixture(scope="module")
def ball_export(tmp_path_factory, tiny_checkpoint):
    from tki_sdk.export.pipeline import ExportConfig, run_export

    root = tmp_path_factory.mktemp("ball_export")
    imgs = image_folder(root / "img", None, n=10)
    out = root / "export"
    run_export(ExportConfig(out=out, checkpoint=tiny_checkpoint, precisions=("fp32",), calib_images=imgs, text=False,
                            val_count=6, timing_rounds=1, time_torch=False, progress=False, embedding="ball"))
    return out, imgs


def test_tki_json_records_the_ball_embedding_and_metric(ball_export, tiny_checkpoint):
    out, _ = ball_export
    md = ModelMetadata.load(out)
    assert (md.output_space, md.metric, md.curvature) == ("ball", "poincare", 1.0)
    cosine = load_model(tiny_checkpoint).metadata_fields()
    assert cosine["output_space"] == "ball_l2" and cosine["metric"] == "cos"
    # Another embedding function, another fingerprint: a cosine gallery refuses these queries.
    same_but_cosine = ModelMetadata.from_dict({**md.to_dict(), "output_space": "ball_l2", "metric": "cos"})
    assert md.fingerprint() != same_but_cosine.fingerprint()


def test_embedder_returns_raw_ball_points_and_the_gallery_ranks_by_poincare(ball_export, tiny_checkpoint):
    import geoopt

    from tki_sdk.runtime import Embedder
    from tki_sdk.runtime import gallery_from_folder
    from tki_sdk.runtime.engine.preprocess import Preprocessor

    out, imgs = ball_export
    emb = Embedder(out, precision="fp32")
    files = sorted(imgs.iterdir())
    got = emb.embed_images(files).embeddings
    model = load_model(tiny_checkpoint).set_embedding("ball")
    ref = torch_float64(model, Preprocessor(emb.metadata.preprocess).batch([str(f) for f in files]))
    np.testing.assert_allclose(got, ref, atol=2e-5)
    norms = np.linalg.norm(got, axis=1)
    assert np.all(norms < 1.0) and np.ptp(norms) > 1e-3  # ball points, not unit vectors

    g, res = gallery_from_folder(imgs, emb, exact=False)
    assert g.metric == "poincare" and g.curvature == 1.0 and g.rescore and len(g) == len(files)
    keys, dist = g.search(got, k=len(files))
    d = geoopt.PoincareBall(c=1.0).dist(torch.from_numpy(got.astype(np.float64))[:, None],
                                        torch.from_numpy(got.astype(np.float64))[None]).numpy()
    # gallery keys come from the files' paths: map them back to positions in ``files``
    pos = {int(k): [f.name for f in files].index(Path(m["path"]).name)
           for k, m in zip(g.keys(), g.get_metadata(g.keys()))}
    ranked = np.vectorize(pos.__getitem__)(keys.astype(np.uint64).astype(object))
    np.testing.assert_array_equal(ranked, np.argsort(d, axis=1, kind="stable"))
    np.testing.assert_allclose(dist, np.sort(d, axis=1), atol=1e-3)


def test_cli_refuses_impossible_embedding_choices(tiny_checkpoint, tmp_path, capsys):
    assert cli.main(["--head", "none", "--model", "TKI-Tiny-ViT", "--embedding", "ball", "--out", str(tmp_path)]) == 2
    assert "needs a TKI head" in capsys.readouterr().err
    assert cli.main(["--checkpoint", str(tiny_checkpoint), "--embedding", "cosine", "--metric", "poincare",
                     "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "does not go with" in err[0]
    model = load_model(tiny_checkpoint)
    model.head.config.geometry = "euclidean"  # a Euclidean head's output is no ball point
    with pytest.raises(ValueError, match="allows metric ip"):
        model.set_embedding("ball", "poincare")
