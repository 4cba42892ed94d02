r"""The three TKI losses (paper sections 4.1 and 4.2), on raw features, mean reductions as written.

Shapes: P domain word vectors, C classes, D feature width.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from tki_sdk.train.config import DEFAULT_ALPHA, DEFAULT_MU, DEFAULT_TAU, STAGE1_LOSSES, TEMPERATURE_RULES



def domain_diversity_loss(
    domain_feats: torch.Tensor, alpha: float = DEFAULT_ALPHA, mu: float = DEFAULT_MU
) -> torch.Tensor:
    r"""L_max, eq. 1 with eq. 2 (domain-wise diversity maximum loss).

    .. math::
        L_{max} = \frac{1}{P(P-1)} \sum_{p=1}^{P} \sum_{q\ne p} \log\left(1 + e^{\alpha(s^d_{pq} - \mu)}\right),
        \qquad s^d_{pq} = \frac{t^d_p \cdot t^d_q}{\|t^d_p\|\,\|t^d_q\|}

    ``domain_feats`` is ``[P, D]`` (raw :math:`t^d_p`); needs P ≥ 2. ``log(1+e^x)`` is computed as softplus.
    """
    p = domain_feats.shape[0]
    if p < 2:
        raise ValueError(f"domain_diversity_loss needs at least 2 domain features, got {p}")
    t = F.normalize(domain_feats, dim=-1)
    s = t @ t.T
    off_diag = ~torch.eye(p, dtype=torch.bool, device=s.device)
    return F.softplus(alpha * (s[off_diag] - mu)).sum() / (p * (p - 1))


def class_consistency_loss(
    prompt_feats: torch.Tensor, class_feats: torch.Tensor, tau: float = DEFAULT_TAU
) -> torch.Tensor:
    r"""L_min, eq. 3 with eq. 4 (category-wise correlation minimum loss, prototype contrastive).

    .. math::
        L_{min} = -\frac{1}{PC} \sum_{p=1}^{P} \sum_{i=1}^{C}
        \log \frac{\exp(s^c_{pii}/\tau)}{\sum_{j=1}^{C} \exp(s^c_{pij}/\tau)},
        \qquad s^c_{pij} = \frac{t_{pi} \cdot t^c_j}{\|t_{pi}\|\,\|t^c_j\|}

    ``prompt_feats`` is ``[P, C, D]`` (:math:`t_{pi}`), ``class_feats`` is ``[C, D]`` (prototypes :math:`t^c_i`).
    """
    if prompt_feats.dim() != 3 or class_feats.dim() != 2 or prompt_feats.shape[1] != class_feats.shape[0]:
        raise ValueError(
            f"class_consistency_loss expects prompt_feats [P,C,D] and class_feats [C,D], got "
            f"{tuple(prompt_feats.shape)} and {tuple(class_feats.shape)}"
        )
    t = F.normalize(prompt_feats, dim=-1)
    proto = F.normalize(class_feats, dim=-1)
    logits = torch.einsum("pid,jd->pij", t, proto) / tau  # [P, C, C]
    log_prob = logits.diagonal(dim1=1, dim2=2) - torch.logsumexp(logits, dim=-1)  # [P, C]
    return -log_prob.mean()


def expansion_loss(
    prompt_feats: torch.Tensor,
    class_feats: torch.Tensor,
    domain_feats: torch.Tensor,
    lam: float = 1.0,
    tau: float = DEFAULT_TAU,
    alpha: float = DEFAULT_ALPHA,
    mu: float = DEFAULT_MU,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    r"""L_exp = L_min + λ·L_max (eq. 5). Returns ``(L_exp, L_min, L_max)``."""
    l_min = class_consistency_loss(prompt_feats, class_feats, tau)
    l_max = domain_diversity_loss(domain_feats, alpha, mu)
    return l_min + lam * l_max, l_min, l_max


def aggregation_loss(z: torch.Tensor, tau: float = DEFAULT_TAU) -> torch.Tensor:
    r"""L_agg, eq. 6 exactly as written (text-proxied domain aggregation, supervised contrastive).

    .. math::
        L_{agg} = -\frac{1}{PC} \sum_{p=1}^{P} \sum_{i=1}^{C}
        \log \frac{\sum_{q\ne p} \exp(h(t_{pi}) \cdot h(t_{qi})/\tau)}
                  {\sum_{q=1}^{P}\sum_{j=1}^{C} \exp(h(t_{pi}) \cdot h(t_{qj})/\tau)}

    ``z`` is ``[P, C, D]`` holding :math:`h(t_{pi})`: the similarity is the raw dot product of whatever ``z``
    holds (no normalisation here); the numerator runs over the other domains q ≠ p of the same class i; the
    denominator over every (q, j), the anchor itself included. Needs P ≥ 2.
    """
    if z.dim() != 3:
        raise ValueError(f"aggregation_loss expects z [P,C,D], got {tuple(z.shape)}")
    p, c, _ = z.shape
    if p < 2:
        raise ValueError(f"aggregation_loss needs at least 2 domains, got {p}")
    flat = z.reshape(p * c, -1)
    logits = (flat @ flat.T) / tau  # [(p,i), (q,j)]
    log_denom = torch.logsumexp(logits, dim=1)  # every (q, j), anchor included
    dom = torch.arange(p, device=z.device).repeat_interleave(c)
    cls = torch.arange(c, device=z.device).repeat(p)
    positive = (cls[:, None] == cls[None, :]) & (dom[:, None] != dom[None, :])
    log_num = torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    return -(log_num - log_denom).mean()




def stage1_objective(l_min: torch.Tensor, l_max: torch.Tensor, losses: str = "both", lam: float = 1.0) -> torch.Tensor:
    r"""The stage-1 loss for the ``losses`` switch: ``both`` :math:`L_{min} + \lambda L_{max}` (eq. 5),
    ``min`` :math:`L_{min}`, ``max`` :math:`\lambda L_{max}`. ``none`` has no objective (``ValueError``)."""
    if losses == "both":
        return l_min + lam * l_max
    if losses == "min":
        return l_min
    if losses == "max":
        return lam * l_max
    raise ValueError(f"stage-1 losses {losses!r} has no objective; choose from {STAGE1_LOSSES[:3]}")




def aggregation_similarity(
    geometry: str, agg_space: str, tau: float = DEFAULT_TAU, curvature: float = 1.0, rule: str = "matched"
) -> dict[str, object]:
    r"""Similarity and temperature L_agg uses, and the bound on its logits: ``{"similarity": "dot" |
    "cosine", "tau": τ_agg, "logit_bound": B, "rule": rule}``.

    The fair-temperature rule (``matched``). L_agg's logits are ``sim(z, z')/τ_agg``. A hyperbolic head
    with ``agg_space="ball"`` (eq. 6 as written) outputs points of the ball of radius :math:`1/\sqrt{c}`,
    so its raw dot products lie in :math:`(-1/c, 1/c)` and its logits in :math:`(-B, B)` with
    :math:`B = 1/(c\,\tau)`, approached as the points near the boundary, where the dot product becomes
    :math:`\cos/c`. A Euclidean head's raw dot products are unbounded: it can lower its effective temperature
    by growing its output norm, which mixes geometry with temperature. Under ``matched`` the Euclidean head
    with ``agg_space="ball"`` is compared by cosine at :math:`\tau_{agg} = c\,\tau`: its logits
    :math:`\cos/(c\,\tau)` have exactly the hyperbolic bound :math:`B = 1/(c\,\tau)` and equal the hyperbolic
    logits of points at the boundary, whatever the output norm. With ``agg_space="tangent_cosine"`` both
    geometries already use cosine at τ (bound :math:`1/\tau`), and the rule changes nothing. ``as_written``
    keeps eq. 6 at τ for the Euclidean head too (no bound: ``logit_bound`` None).
    """
    if rule not in TEMPERATURE_RULES:
        raise ValueError(f"temperature rule must be one of {TEMPERATURE_RULES}, got {rule!r}")
    if agg_space == "tangent_cosine":
        return {"similarity": "cosine", "tau": tau, "logit_bound": 1.0 / tau, "rule": rule}
    if geometry == "hyperbolic":
        return {"similarity": "dot", "tau": tau, "logit_bound": 1.0 / (curvature * tau), "rule": rule}
    if rule == "matched":
        return {"similarity": "cosine", "tau": curvature * tau, "logit_bound": 1.0 / (curvature * tau), "rule": rule}
    return {"similarity": "dot", "tau": tau, "logit_bound": None, "rule": rule}
