r"""Poincaré-ball operations as plain tensor arithmetic (traceable by ``torch.onnx.export`` and TensorRT).

The ball of curvature :math:`-c` (:math:`c>0`) has radius :math:`1/\sqrt{c}`. Conventions, clamps and
results match ``geoopt.PoincareBall(c)`` (``geoopt/manifolds/stereographic/math.py``) with its default
``project=True``, to 1e-10 in float64. Differences from geoopt, none of which changes a float32/64 result:

- no data-dependent Python branches and no ``.item()``: ``c`` is a Python float (a fixed hyperparameter);
- float16 / bfloat16 inputs are computed in float32 and cast back, so norms of large fp16 vectors do not
  overflow and the 1e-15 clamps do not underflow: every op is finite for zero vectors, huge tangent
  vectors and points on (or past) the boundary;
- the artanh clamp ``1 - 1e-7`` (geoopt's) is widened to the dtype's epsilon where 1e-7 is not representable.

Notation: :math:`\tanh_c(x) = \tanh(\sqrt{c}\,x)/\sqrt{c}`, :math:`\operatorname{artanh}_c(x) =
\operatorname{artanh}(\sqrt{c}\,x)/\sqrt{c}`.
"""
from __future__ import annotations

import math

import torch

MIN_NORM = 1e-15
_ARTANH_EPS = 1e-7
_TANH_CLAMP = 15.0
# geoopt's projection margin: a point is kept within (1 - eps)/sqrt(c) of the origin.
_PROJECT_EPS = {torch.float64: 1e-5, torch.float32: 4e-3}


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x.norm(dim=-1, p=2, keepdim=True).clamp_min(MIN_NORM)


def _sqrt_c(c: float) -> float:
    # geoopt computes sqrt(|k| + 1e-15); keep the same constant so float64 results agree bit for bit-ish.
    return math.sqrt(abs(c) + 1e-15)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-_TANH_CLAMP, _TANH_CLAMP).tanh()


def _artanh(x: torch.Tensor) -> torch.Tensor:
    eps = max(_ARTANH_EPS, torch.finfo(x.dtype).eps)
    x = x.clamp(-1 + eps, 1 - eps)
    return 0.5 * (torch.log(1 + x) - torch.log(1 - x))


def _tan_c(x: torch.Tensor, c: float) -> torch.Tensor:
    s = _sqrt_c(c)
    return _tanh(x * s) / s


def _artan_c(x: torch.Tensor, c: float) -> torch.Tensor:
    s = _sqrt_c(c)
    return _artanh(x * s) / s


def _project(x: torch.Tensor, c: float) -> torch.Tensor:
    eps = _PROJECT_EPS.get(x.dtype, 4e-3)
    maxnorm = (1 - eps) / _sqrt_c(c)
    norm = _norm(x)
    return torch.where(norm > maxnorm, x / norm * maxnorm, x)


def project(x: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""Pull points back inside the ball: :math:`x \mapsto x \cdot \min(1, r_{max}/\|x\|)`.

    :math:`r_{max} = (1-\epsilon)/\sqrt{c}`, :math:`\epsilon` = 4e-3 (float32, float16) or 1e-5 (float64).
    """
    xw = x.to(_work_dtype(x))
    return _project(xw, c).to(x.dtype)


def expmap0(v: torch.Tensor, c: float = 1.0, project_result: bool = True) -> torch.Tensor:
    r"""Exponential map at the origin: :math:`\exp_0^c(v) = \tanh(\sqrt{c}\|v\|)\,\frac{v}{\sqrt{c}\|v\|}`.

    Takes a tangent vector at the origin (any Euclidean vector) into the ball; projected as geoopt does.
    """
    vw = v.to(_work_dtype(v))
    n = _norm(vw)
    y = _tan_c(n, c) * (vw / n)
    if project_result:
        y = _project(y, c)
    return y.to(v.dtype)


def logmap0(y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""Logarithmic map at the origin: :math:`\log_0^c(y) = \operatorname{artanh}(\sqrt{c}\|y\|)\,\frac{y}{\sqrt{c}\|y\|}`.

    Inverse of :func:`expmap0` inside the ball. Points on or past the boundary are clamped
    (:math:`\sqrt{c}\|y\| \le 1-10^{-7}`), so the result is always finite.
    """
    yw = y.to(_work_dtype(y))
    n = _norm(yw)
    return ((yw / n) * _artan_c(n, c)).to(y.dtype)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float = 1.0, project_result: bool = True) -> torch.Tensor:
    r"""Möbius addition :math:`x \oplus_c y = \frac{(1 + 2c\langle x,y\rangle + c\|y\|^2)\,x + (1 - c\|x\|^2)\,y}
    {1 + 2c\langle x,y\rangle + c^2\|x\|^2\|y\|^2}` (denominator clamped at 1e-15); projected as geoopt does.
    """
    wd = _work_dtype(x)
    xw, yw = x.to(wd), y.to(wd)
    x2 = (xw * xw).sum(dim=-1, keepdim=True)
    y2 = (yw * yw).sum(dim=-1, keepdim=True)
    xy = (xw * yw).sum(dim=-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * xw + (1 - c * x2) * yw
    denom = 1 + 2 * c * xy + (c * c) * x2 * y2
    out = num / denom.clamp_min(MIN_NORM)
    if project_result:
        out = _project(out, c)
    return out.to(x.dtype)


def mobius_matvec(m: torch.Tensor, x: torch.Tensor, c: float = 1.0, project_result: bool = True) -> torch.Tensor:
    r"""Möbius matrix-vector product :math:`M \otimes_c x = \tanh_c\!\left(\frac{\|Mx\|}{\|x\|}
    \operatorname{artanh}_c(\|x\|)\right) \frac{Mx}{\|Mx\|}`, and 0 where :math:`Mx = 0`.

    ``m`` is ``[out, in]`` (a ``nn.Linear`` weight), ``x`` is ``[..., in]``; projected as geoopt does.
    """
    wd = _work_dtype(x)
    xw, mw = x.to(wd), m.to(wd)
    x_norm = _norm(xw)
    mx = xw @ mw.transpose(-1, -2)
    mx_raw_norm = mx.norm(dim=-1, p=2, keepdim=True)
    mx_norm = mx_raw_norm.clamp_min(MIN_NORM)
    res = _tan_c(mx_norm / x_norm * _artan_c(x_norm, c), c) * (mx / mx_norm)
    res = torch.where(mx_raw_norm == 0, torch.zeros_like(res), res)
    if project_result:
        res = _project(res, c)
    return res.to(x.dtype)


def dist0(y: torch.Tensor, c: float = 1.0) -> torch.Tensor:
    r"""Geodesic distance to the origin, :math:`2\,\operatorname{artanh}_c(\|y\|)` (``[..., 1]``)."""
    yw = y.to(_work_dtype(y))
    return (2 * _artan_c(_norm(yw), c)).to(y.dtype)
