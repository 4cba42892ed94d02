"""Running a test module once per graph backend: ``Gallery(...)`` defaults to the backend, and a gallery of
a storage the backend lacks (hnswlib, faiss: f16 / i8) skips the test that asks for it."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from tki_sdk.runtime.index.gallery import Gallery


@contextlib.contextmanager
def default_backend(name: str) -> Iterator[str]:
    original = Gallery.__init__

    def init(self, *args, index=name, **kw):
        if index in ("hnswlib", "faiss") and kw.get("dtype", "f32") != "f32" and not kw.get("exact"):
            pytest.skip(f"index {index} has no {kw['dtype']} storage (refused: test_search_backends.py)")
        original(self, *args, index=index, **kw)

    Gallery.__init__ = init
    try:
        yield name
    finally:
        Gallery.__init__ = original
