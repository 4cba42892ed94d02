"""Retrieval metrics against hand-worked examples, scikit-learn and a pure-Python reference."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from tki_sdk.benchmarks.metrics import (
    average_precision,
    precision_at_k,
    ranked_relevance,
    retrieval_metrics,
)


def _reference_rel(scores_row, q_label, g_labels, k=None):
    """Pure-Python ranking: sort by (-score, gallery index), i.e. descending score, ties by gallery order."""
    order = sorted(range(len(scores_row)), key=lambda j: (-scores_row[j], j))
    if k is not None:
        order = order[:k]
    return [int(g_labels[j] == q_label) for j in order]


def _reference_ap(rel):
    hits, total = 0, 0.0
    for j, r in enumerate(rel, start=1):
        if r:
            hits += 1
            total += hits / j
    return total / hits if hits else 0.0


# One query of label 1 against a gallery of 5 items.
#   gallery labels   [1,   0,   1,   1,   0  ]
#   scores           [0.9, 0.8, 0.7, 0.1, 0.6]
# ranking (desc):     idx0 (0.9, rel), idx1 (0.8), idx2 (0.7, rel), idx4 (0.6), idx3 (0.1, rel)
# rel by rank:        [1, 0, 1, 0, 1]
# P(1)=1/1, P(3)=2/3, P(5)=3/5
HAND_SCORES = np.array([[0.9, 0.8, 0.7, 0.1, 0.6]])
HAND_Q = np.array([1])
HAND_G = np.array([1, 0, 1, 1, 0])


def test_hand_worked_average_precision():
    # AP (whole gallery) = (1 + 2/3 + 3/5) / 3 = (15 + 10 + 9) / 45 = 34/45
    assert average_precision(HAND_SCORES, HAND_Q, HAND_G)[0] == pytest.approx(34 / 45, abs=1e-12)
    # AP@2: top-2 rel [1, 0] -> one relevant within top 2: P(1)*1 / 1 = 1
    assert average_precision(HAND_SCORES, HAND_Q, HAND_G, k=2)[0] == pytest.approx(1.0)
    # AP@3: top-3 rel [1, 0, 1] -> (1 + 2/3) / 2 = 5/6
    assert average_precision(HAND_SCORES, HAND_Q, HAND_G, k=3)[0] == pytest.approx(5 / 6)
    # AP@4: top-4 rel [1, 0, 1, 0] -> same two hits: 5/6
    assert average_precision(HAND_SCORES, HAND_Q, HAND_G, k=4)[0] == pytest.approx(5 / 6)


def test_hand_worked_precision_at_k():
    # Prec@1 = 1/1, Prec@2 = 1/2, Prec@3 = 2/3, Prec@5 = 3/5
    for k, want in [(1, 1.0), (2, 0.5), (3, 2 / 3), (5, 0.6)]:
        assert precision_at_k(HAND_SCORES, HAND_Q, HAND_G, k)[0] == pytest.approx(want)


def test_ties_broken_by_gallery_order():
    # All four scores equal: the stable ranking is the gallery order itself.
    scores = np.full((2, 4), 0.5)
    q = np.array([1, 1])
    # Query 0 sees gallery labels [0,1,0,1] -> rel [0,1,0,1]: AP = (1/2 + 2/4) / 2 = 0.5
    # Both queries share the gallery; to get the mirrored case use a second gallery below.
    ap = average_precision(scores, q, np.array([0, 1, 0, 1]))
    np.testing.assert_allclose(ap, [0.5, 0.5])
    # Gallery [1,0,1,0] -> rel [1,0,1,0]: AP = (1 + 2/3) / 2 = 5/6; Prec@1 = 1, Prec@2 = 1/2
    assert average_precision(scores[:1], q[:1], np.array([1, 0, 1, 0]))[0] == pytest.approx(5 / 6)
    assert precision_at_k(scores[:1], q[:1], np.array([1, 0, 1, 0]), 1)[0] == 1.0
    assert precision_at_k(scores[:1], q[:1], np.array([0, 1, 0, 1]), 1)[0] == 0.0
    # A tie at the top-k boundary: scores [0.9, 0.5, 0.5, 0.5], k=2 keeps idx0 and idx1 (earlier of the ties).
    s = np.array([[0.9, 0.5, 0.5, 0.5]])
    assert precision_at_k(s, [1], np.array([0, 1, 0, 0]), 2)[0] == 0.5
    assert precision_at_k(s, [1], np.array([0, 0, 1, 0]), 2)[0] == 0.0


def test_no_relevant_item_gives_zero():
    rng = np.random.default_rng(0)
    scores = rng.random((3, 20))
    g = rng.integers(0, 3, 20)
    q = np.array([7, 7, 7])  # a label absent from the gallery
    np.testing.assert_array_equal(average_precision(scores, q, g), 0.0)
    np.testing.assert_array_equal(average_precision(scores, q, g, k=5), 0.0)
    np.testing.assert_array_equal(precision_at_k(scores, q, g, 5), 0.0)
    # Relevant items exist but none within the top 1: AP@1 = 0 (no NaN).
    assert average_precision(HAND_SCORES, [0], HAND_G, k=1)[0] == 0.0


def test_k_larger_than_gallery():
    rng = np.random.default_rng(1)
    scores = rng.random((5, 12))
    q = rng.integers(0, 3, 5)
    g = rng.integers(0, 3, 12)
    np.testing.assert_allclose(average_precision(scores, q, g, k=200), average_precision(scores, q, g))
    # Prec@k divides by k also when k > G (the paper's protocol; a sampled gallery is not inflated).
    np.testing.assert_allclose(precision_at_k(scores, q, g, 200), (g[None, :] == q[:, None]).sum(1) / 200)


def test_against_sklearn_whole_gallery():
    rng = np.random.default_rng(2)
    scores = rng.random((40, 300))  # continuous: no ties
    q = rng.integers(0, 6, 40)
    g = rng.integers(0, 6, 300)
    ours = average_precision(scores, q, g)
    ref = [average_precision_score(g == q[i], scores[i]) for i in range(40)]
    np.testing.assert_allclose(ours, ref, atol=1e-12)


@pytest.mark.parametrize("k", [1, 3, 10, 57, 299, 300, None])
def test_against_pure_python_with_heavy_ties(k):
    rng = np.random.default_rng(3)
    # Few distinct values -> many ties, also at the top-k boundary; 300 values -> the argpartition path.
    for hi in (5, 300):
        scores = rng.integers(0, hi, (25, 300)).astype(np.float32)
        q = rng.integers(0, 4, 25)
        g = rng.integers(0, 4, 300)
        rel = ranked_relevance(scores, q, g, k)
        ap = average_precision(scores, q, g, k)
        for i in range(25):
            ref = _reference_rel(scores[i], q[i], g, k)
            assert rel[i].astype(int).tolist() == ref
            assert ap[i] == pytest.approx(_reference_ap(ref), abs=1e-12)
            if k is not None:
                assert precision_at_k(scores[i : i + 1], q[i : i + 1], g, k)[0] == pytest.approx(sum(ref) / k)


def test_chunked_equals_unchunked_and_direct():
    rng = np.random.default_rng(4)
    qe = rng.standard_normal((37, 16)).astype(np.float32)
    ge = rng.standard_normal((250, 16)).astype(np.float32)
    ql = rng.integers(0, 5, 37)
    gl = rng.integers(0, 5, 250)
    full = retrieval_metrics(qe, ql, ge, gl, ks=(10, 200), chunk=None, return_per_query=True)
    for chunk in (1, 7, 36, 1000):
        part = retrieval_metrics(qe, ql, ge, gl, ks=(10, 200), chunk=chunk, return_per_query=True)
        for name in full["per_query"]:
            np.testing.assert_array_equal(part["per_query"][name], full["per_query"][name])
    # Direct: cosine matrix + the contract functions.
    qn = qe / np.linalg.norm(qe, axis=1, keepdims=True)
    gn = ge / np.linalg.norm(ge, axis=1, keepdims=True)
    s = qn @ gn.T
    assert full["mAP"] == pytest.approx(average_precision(s, ql, gl).mean(), abs=1e-12)
    assert full["mAP@200"] == pytest.approx(average_precision(s, ql, gl, 200).mean(), abs=1e-12)
    assert full["Prec@10"] == pytest.approx(precision_at_k(s, ql, gl, 10).mean(), abs=1e-12)
    # Top-k only (no whole-gallery sort) gives the same mAP@k / Prec@k.
    topk = retrieval_metrics(qe, ql, ge, gl, ks=(10, 200), chunk=5, full_map=False)
    assert "mAP" not in topk
    for name in ("mAP@10", "mAP@200", "Prec@10", "Prec@200"):
        assert topk[name] == full[name]


def test_exclude_self_equals_removing_the_item():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((30, 8)).astype(np.float32)
    lab = rng.integers(0, 3, 30)
    res = retrieval_metrics(x, lab, x, lab, ks=(5,), chunk=4, exclude_self=True, return_per_query=True)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    for i in range(30):
        keep = np.arange(30) != i
        s = xn[i : i + 1] @ xn[keep].T
        assert res["per_query"]["mAP"][i] == pytest.approx(average_precision(s, lab[i : i + 1], lab[keep])[0], abs=1e-9)
        assert res["per_query"]["Prec@5"][i] == pytest.approx(precision_at_k(s, lab[i : i + 1], lab[keep], 5)[0])
    # Without exclusion every query finds itself first: AP@1 = 1.
    assert retrieval_metrics(x, lab, x, lab, ks=(1,))["mAP@1"] == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError):
        average_precision(np.zeros(5), [0], [0] * 5)
    with pytest.raises(ValueError):
        average_precision(np.zeros((2, 5)), [0], [0] * 5)
    with pytest.raises(ValueError):
        average_precision(np.full((1, 3), np.nan), [0], [0, 0, 0])
    with pytest.raises(ValueError):
        precision_at_k(np.zeros((1, 3)), [0], [0, 0, 0], 0)
    with pytest.raises(ValueError):
        retrieval_metrics(np.zeros((2, 3)), [0, 0], np.zeros((4, 3)), [0] * 4, exclude_self=True)


def _reference_ap_min(rel_topk, n_relevant, k):
    """SAKE's mAP@k: the sum of P(j) over the hits within the top k, divided by min(k, relevant in the gallery)."""
    hits, total = 0, 0.0
    for j, r in enumerate(rel_topk[:k], start=1):
        if r:
            hits += 1
            total += hits / j
    return total / min(k, n_relevant) if n_relevant else 0.0


def test_every_map_convention_and_prec1_against_pure_python():
    """Whole-gallery mAP, mAP@k by hits and mAP@k over min(k, relevant), Prec@k and Prec@1 on one run."""
    rng = np.random.default_rng(3)
    q, g, k = 13, 40, 7
    qe, ge = rng.normal(size=(q, 5)), rng.normal(size=(g, 5))
    ql, gl = rng.integers(0, 4, q), rng.integers(0, 4, g)
    gl[gl == 3] = 2  # label 3 has no relevant item in the gallery: every AP of such a query is 0
    ql[0] = 3
    res = retrieval_metrics(qe, ql, ge, gl, ks=(1, k))
    qn = qe / np.linalg.norm(qe, axis=1, keepdims=True)
    gn = ge / np.linalg.norm(ge, axis=1, keepdims=True)
    s = (qn @ gn.T).tolist()
    full = [_reference_rel(s[i], ql[i], gl) for i in range(q)]
    n_rel = [int((gl == ql[i]).sum()) for i in range(q)]
    assert res["mAP"] == pytest.approx(np.mean([_reference_ap(r) for r in full]))
    assert res[f"mAP@{k}"] == pytest.approx(np.mean([_reference_ap(r[:k]) for r in full]))
    assert res[f"mAP@{k}:min"] == pytest.approx(np.mean([_reference_ap_min(r, n, k) for r, n in zip(full, n_rel)]))
    assert res[f"Prec@{k}"] == pytest.approx(np.mean([sum(r[:k]) / k for r in full]))
    assert res["Prec@1"] == pytest.approx(np.mean([r[0] for r in full]))
    # The conventions differ on this data (else the test could not tell them apart).
    assert len({round(res[m], 9) for m in ("mAP", f"mAP@{k}", f"mAP@{k}:min")}) == 3


def test_map_min_counts_relevant_items_without_the_query_itself():
    """Same-domain search (exclude_self): the query's own item is not among its relevant items."""
    rng = np.random.default_rng(4)
    e = rng.normal(size=(12, 4))
    lab = np.array([0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2])
    k = 3
    res = retrieval_metrics(e, lab, e, lab, ks=(k,), exclude_self=True)
    en = e / np.linalg.norm(e, axis=1, keepdims=True)
    s = en @ en.T
    vals = []
    for i in range(12):
        keep = [j for j in range(12) if j != i]
        rel = _reference_rel(s[i, keep].tolist(), lab[i], lab[keep])
        vals.append(_reference_ap_min(rel, int((lab[keep] == lab[i]).sum()), k))
    assert res[f"mAP@{k}:min"] == pytest.approx(np.mean(vals))
