"""The one guard for the import order of native libraries (usearch, onnxruntime, torch) in one process.

usearch's compiled module carries its own static libstdc++ whose locale symbols are process-unique
(``STB_GNU_UNIQUE``): when it is the first C++ library in the process, a later ``import onnxruntime``
crashes the interpreter (SIGSEGV inside libstdc++), and torch's C++ exceptions break (torch.jit spins
forever; pytorch/pytorch#109923). Loading the system libstdc++ with ``RTLD_GLOBAL`` first -- what importing
onnxruntime or torch first also does -- avoids both.

- :func:`usearch_index` imports ``usearch.index`` after that preload; every use of usearch in tki-sdk goes
  through it.
- :func:`import_onnxruntime` refuses, in one line, the one order that would still crash (usearch loaded by
  someone else first, nothing preloaded), and names the missing install.
"""
from __future__ import annotations

import sys
from typing import Any

from tki_sdk.common.extras import missing_extra

__all__ = ["usearch_index", "import_onnxruntime", "preload_libstdcxx", "libstdcxx_preloaded"]

_LIBSTDCXX_PRELOADED = False


def libstdcxx_preloaded() -> bool:
    """True once :func:`preload_libstdcxx` has loaded a C++ runtime globally."""
    return _LIBSTDCXX_PRELOADED


def preload_libstdcxx() -> None:
    """Load the system ``libstdc++.so.6`` with ``RTLD_GLOBAL`` (Linux), else import onnxruntime, once."""
    global _LIBSTDCXX_PRELOADED
    if _LIBSTDCXX_PRELOADED:
        return
    import ctypes

    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL("libstdc++.so.6", mode=ctypes.RTLD_GLOBAL)
            _LIBSTDCXX_PRELOADED = True
            return
        except OSError:
            pass
    try:  # no system libstdc++ to preload: onnxruntime first does the same
        import onnxruntime  # noqa: F401

        _LIBSTDCXX_PRELOADED = True
    except ImportError:
        pass


def usearch_index() -> Any:
    """``usearch.index``, imported so that onnxruntime (and torch) can still be imported afterwards."""
    if "usearch.compiled" not in sys.modules:
        preload_libstdcxx()
    try:
        import usearch.index
    except ImportError as e:
        raise missing_extra("usearch is not installed", "runtime") from e
    return usearch.index


def import_onnxruntime() -> Any:
    """``import onnxruntime`` with the two failures users hit named in one line each.

    When usearch's extension is loaded and neither onnxruntime, torch nor a preloaded system libstdc++ came
    first, importing onnxruntime would crash the interpreter, so this raises ``ImportError`` instead.
    """
    loaded = {m: sys.modules.get(m) is not None for m in ("onnxruntime", "usearch.compiled", "torch")}
    if loaded["usearch.compiled"] and not loaded["onnxruntime"] and not loaded["torch"] and not _LIBSTDCXX_PRELOADED:
        raise ImportError(
            "usearch was imported before onnxruntime, and loading onnxruntime now would crash this process; "
            "import tki_sdk.runtime.Embedder (or onnxruntime) before usearch"
        )
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise missing_extra("onnxruntime is not installed", "runtime") from e
    return ort
