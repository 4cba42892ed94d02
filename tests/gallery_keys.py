"""Gallery keys that are not row numbers: random, large (above 2**53, so a float64 round trip would change
them, and many above 2**63, so a signed int64 one would too), unique, in no order. A search that returned row
positions, or any key arithmetic, gives keys that :func:`rows_of` does not know and fails the test."""
from __future__ import annotations

import numpy as np

from tki_sdk.runtime.index.gallery import MISSING_KEY

#: Below MISSING_KEY with room for ``add(None, ...)`` (max key + 1 onwards) in the tests.
_LO, _HI = 2**53 + 1, int(MISSING_KEY) - 2**20


def random_keys(n: int, seed: int = 0) -> np.ndarray:
    """``n`` distinct uint64 keys in [2**53 + 1, 2**64 - 2**20), shuffled."""
    rng = np.random.default_rng(seed)
    out = np.unique(rng.integers(_LO, _HI, size=n + 16, dtype=np.uint64))
    while out.size < n:
        out = np.unique(np.concatenate([out, rng.integers(_LO, _HI, size=n, dtype=np.uint64)]))
    out = out[rng.permutation(out.size)][:n]
    assert not np.isin(out, np.arange(max(n, 1), dtype=np.uint64)).any()
    return out


def rows_of(found: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """The row (position in ``keys``) of each key in ``found`` (any shape), ``-1`` for MISSING_KEY; a key
    that is neither fails the test (the gallery made it up)."""
    found = np.asarray(found, dtype=np.uint64)
    keys = np.asarray(keys, dtype=np.uint64)
    order = np.argsort(keys, kind="stable")
    sk = keys[order]
    at = np.clip(np.searchsorted(sk, found), 0, len(sk) - 1)
    hit = sk[at] == found
    missing = found == MISSING_KEY
    unknown = ~hit & ~missing
    assert not unknown.any(), f"search returned keys that were never added: {found[unknown][:5].tolist()}"
    return np.where(hit, order[at], -1).astype(np.int64)
