"""``tki serve``: an HTTP search service over an exported TKI model and a tki gallery (torch-free).

FastAPI on uvicorn; concurrent queries are decoded in a thread pool and coalesced into one inference batch
(:mod:`.batching`); the gallery is reloaded when its ``CURRENT`` changes (:mod:`.reloading`); Prometheus
metrics (:mod:`.metrics`); a plain HTML/CSS/JS page at ``/`` (``static/``). Needs ``pip install
'tki-sdk[serve]'``. Modules: ``config`` (settings, defaults, bounds, the flags of ``tki serve``), ``inputs``
(request validation), ``collaborators`` (what the service needs of an embedder and a batcher), ``service``
(model + gallery + batcher), ``routes`` (HTTP), ``security`` (API key, Host), ``middleware`` (body limit,
metrics), ``thumbnails``, ``connections`` (the connection cap of the uvicorn protocol), ``app`` (assembly).
The command itself is :mod:`tki_sdk.cli.serve`.

    from tki_sdk.serve import ServeConfig, create_app
    app = create_app(ServeConfig(model="export/", gallery="pacs.gallery"))
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["ServeConfig", "create_app", "SearchService"]

_LAZY = {"ServeConfig": "config", "create_app": "app", "SearchService": "service"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
