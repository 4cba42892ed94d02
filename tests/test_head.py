"""The hyperbolic head against a geoopt composition, its Euclidean twin, and its ONNX export."""
from __future__ import annotations

import geoopt
import numpy as np
import pytest
import torch

from tki_sdk.train.head import HeadConfig, HyperbolicMLP


def _geoopt_forward(head: HyperbolicMLP, feats: torch.Tensor) -> torch.Tensor:
    c = head.config.curvature
    ball = geoopt.PoincareBall(c=torch.tensor(c, dtype=feats.dtype))
    x = ball.expmap0(feats / feats.norm(dim=-1, keepdim=True))
    for i, layer in enumerate(head.layers):
        x = ball.mobius_add(ball.mobius_matvec(layer.weight, x), ball.expmap0(layer.bias))
        if i < len(head.layers) - 1:
            x = ball.expmap0(torch.relu(ball.logmap0(x)))
    return x


@pytest.mark.parametrize("c", [0.3, 1.0, 2.5])
@pytest.mark.parametrize("depth", [1, 2, 3])
def test_head_equals_geoopt_composition(c: float, depth: int) -> None:
    torch.manual_seed(0)
    head = HyperbolicMLP(HeadConfig(in_dim=12, hidden_dim=20, out_dim=8, depth=depth, curvature=c)).double()
    feats = torch.randn(16, 12, dtype=torch.float64) * 7
    with torch.no_grad():
        torch.testing.assert_close(head(feats), _geoopt_forward(head, feats), atol=1e-10, rtol=0)
        z = head(feats)
        assert (z.norm(dim=-1) < 1 / c**0.5).all()
        torch.testing.assert_close(head.embed(feats), z / z.norm(dim=-1, keepdim=True))


def test_euclidean_ablation_has_same_sizes() -> None:
    hyp = HyperbolicMLP(HeadConfig(in_dim=16, hidden_dim=24, depth=3))
    euc = HyperbolicMLP(HeadConfig(in_dim=16, hidden_dim=24, depth=3, geometry="euclidean"))
    shapes = lambda m: [tuple(p.shape) for p in m.parameters()]  # noqa: E731
    assert shapes(hyp) == shapes(euc)
    feats = torch.randn(5, 16)
    with torch.no_grad():
        want = feats / feats.norm(dim=-1, keepdim=True)
        for i, layer in enumerate(euc.layers):
            want = layer(want)
            want = torch.relu(want) if i < 2 else want
        torch.testing.assert_close(euc(feats), want)


def test_bad_config() -> None:
    with pytest.raises(ValueError, match="curvature"):
        HeadConfig(in_dim=4, curvature=0)
    with pytest.raises(ValueError, match="geometry"):
        HeadConfig(in_dim=4, geometry="spherical")
    with pytest.raises(ValueError, match="depth"):
        HeadConfig(in_dim=4, depth=0)


def test_head_exports_to_onnx_and_matches_torch(tmp_path) -> None:
    import onnx
    import onnxruntime as ort

    torch.manual_seed(1)
    head = HyperbolicMLP(HeadConfig(in_dim=32, depth=2, curvature=1.0)).eval()

    class Embed(torch.nn.Module):
        def __init__(self, h):
            super().__init__()
            self.h = h

        def forward(self, x):
            return self.h.embed(x)

    path = tmp_path / "head.onnx"
    x = torch.randn(3, 32) * 5
    torch.onnx.export(Embed(head), (x,), str(path), input_names=["x"], output_names=["z"],
                      dynamic_axes={"x": {0: "n"}, "z": {0: "n"}}, opset_version=17, dynamo=False)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx"}
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 7):
        inp = np.random.default_rng(n).normal(size=(n, 32)).astype(np.float32) * 5
        inp[0] = 0.0  # a zero feature stays finite through the exported graph
        got = sess.run(None, {"x": inp})[0]
        with torch.no_grad():
            want = head.embed(torch.from_numpy(inp)).numpy()
        assert np.isfinite(got).all()
        np.testing.assert_allclose(got, want, atol=2e-5)
