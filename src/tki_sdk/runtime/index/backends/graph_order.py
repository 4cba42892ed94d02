"""Breadth-first node order of a graph, for laying out an HNSW graph's nodes in memory.

A search walks from a node to its neighbours; numbered in breadth-first order from the entry point, the
neighbours of a node sit near it in memory, so the walk touches fewer distinct pages and cache lines than
with insertion order (Coleman et al., "Graph Reordering for Cache-Efficient Near Neighbor Search",
NeurIPS 2022, where breadth-first order is among the simple orders that gain most).

``bfs_order(links, start)`` returns ``perm`` with ``perm[i]`` = the old number of the node that becomes
node ``i``: ``start`` first, then its neighbours in link order, then theirs (each node once, at its first
discovery: the order of a queue-based breadth-first search). Nodes not reachable from ``start`` follow,
each starting a new search from the lowest unreached number.
"""
from __future__ import annotations

import numpy as np

__all__ = ["bfs_order"]


def bfs_order(links: np.ndarray, start: int) -> np.ndarray:
    """``links [N, L]`` int (neighbour numbers, ``-1`` for empty slots), ``start`` a node -> ``perm [N]``
    int64, a permutation of ``0..N-1`` in breadth-first order (module docstring). Vectorised one level at a
    time: a level's nodes, in order, list their neighbours; the first discovery of each unseen node keeps
    its place."""
    links = np.asarray(links)
    n = links.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if not 0 <= int(start) < n:
        raise ValueError(f"start node {start} is not among the graph's {n} nodes")
    seen = np.zeros(n, dtype=bool)
    parts: list[np.ndarray] = []
    frontier = np.array([int(start)], dtype=np.int64)
    while True:
        seen[frontier] = True
        parts.append(frontier)
        cand = links[frontier].reshape(-1).astype(np.int64)
        cand = cand[(cand >= 0) & (cand < n)]
        cand = cand[~seen[cand]]
        if cand.size:
            uniq, first = np.unique(cand, return_index=True)
            frontier = uniq[np.argsort(first, kind="stable")]
            continue
        rest = np.flatnonzero(~seen)
        if not rest.size:
            break
        frontier = rest[:1].astype(np.int64)
    return np.concatenate(parts)
