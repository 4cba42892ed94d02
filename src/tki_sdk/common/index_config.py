"""``IndexConfig``: how a gallery indexes its vectors, with the one copy of every default.

The HNSW graph (Malkov & Yashunin, 2018) of an approximate gallery is shaped by ``connectivity`` (M,
neighbours kept per node), ``expansion_add`` (efConstruction, candidates considered per insert) and searched
with ``expansion_search`` (ef, candidates kept per query: recall rises and speed falls with it).
``target_recall`` is the recall@10 that self-tuning chooses ``expansion_search`` for
(:mod:`tki_sdk.runtime.index.tuning`). Exact galleries ignore all four.

The gallery (``Gallery(...)``), its manifest (``gallery.json`` fields absent from older files), the embedding
job and the CLI flags all take their defaults from here. :meth:`IndexConfig.for_backend` gives a graph
backend's defaults: the class defaults, except where :data:`BACKEND_DEFAULTS` says otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass

from tki_sdk.common.errors import ConfigError

__all__ = ["IndexConfig", "BACKEND_DEFAULTS"]

#: Graph settings of the backends whose defaults differ from :class:`IndexConfig`'s. FAISS links a new node
#: to up to ``2 M`` base-layer neighbours at once (usearch and hnswlib: ``M``, more arriving as others link
#: back), so its graph is denser at equal M. M 30: the largest M whose graph plus the gallery's slot keys fits
#: in FAISS HNSW32's float32 memory (base-layer links ``4 * 2M`` bytes per item: 240 against 256, which leaves
#: room for the 8-byte key of each slot); the search suite's 1M x 512 runs compare it with FAISS HNSW32
#: (``benchmarks/results/search/``).
BACKEND_DEFAULTS: dict[str, dict[str, int]] = {"faiss": {"connectivity": 30}}


@dataclass(frozen=True)
class IndexConfig:
    """HNSW parameters and the self-tuning target of one gallery (bounds checked on construction).

    - ``connectivity``: M, 2 <= M <= 256 (default 16);
    - ``expansion_add``: efConstruction, >= 1 (default 128);
    - ``expansion_search``: ef, >= 1 (default 64; self-tuning replaces it);
    - ``target_recall``: in [0, 1]; 0 keeps ``expansion_search`` as set (default 0.99).
    """

    connectivity: int = 16
    expansion_add: int = 128
    expansion_search: int = 64
    target_recall: float = 0.99

    def __post_init__(self) -> None:
        for name in ("connectivity", "expansion_add", "expansion_search"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(name, f"must be an integer, got {value!r}")
        if not 2 <= self.connectivity <= 256:
            raise ConfigError("connectivity", f"must be in 2..256, got {self.connectivity}")
        if self.expansion_add < 1:
            raise ConfigError("expansion_add", f"must be >= 1, got {self.expansion_add}")
        if self.expansion_search < 1:
            raise ConfigError("expansion_search", f"must be >= 1, got {self.expansion_search}")
        if not 0.0 <= float(self.target_recall) <= 1.0:
            raise ConfigError("target_recall", f"must be in [0, 1], got {self.target_recall}")

    @classmethod
    def for_backend(cls, backend: str | None) -> "IndexConfig":
        """The defaults of a gallery on graph backend ``backend`` (:data:`BACKEND_DEFAULTS`)."""
        return cls(**BACKEND_DEFAULTS.get(backend or "", {}))
