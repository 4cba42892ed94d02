"""The artifact table: every kind of exported model file, in one place.

``key -> ArtifactKind(file, format, precision, parity_threshold, runtime)``. ``tki-export`` names its files
from it, the validator takes each threshold from it, the runtime ``Embedder`` chooses its backend from
``format`` and ``runtime`` (never from a file suffix), and the GPU suite lists its backends from it.

Parity: an artifact passes when every embedding's cosine with the float64 torch reference is at least
``parity_threshold`` (fp32 0.99999, fp16 0.999, int8 0.99, TensorRT fp16 0.999, OpenVINO int8 0.99).

``openvino_int8`` is an ONNX graph with QuantizeLinear / DequantizeLinear pairs written by NNCF's
post-training quantisation; it is validated, timed and run with OpenVINO (``runtime="openvino"``), and
built only when asked for (``tki-export --openvino``), so it is not in :data:`PRECISIONS`.

Batch invariance (:func:`batch_invariant`): an artifact whose output for one image depends on the other
images of its batch -- int8 quantised dynamically with one activation scale per batch tensor -- may run only
when chosen explicitly; the runtime never picks it by itself (engine choice, default precision).

Each kind has a ``role``: ``"image"`` (pixels -> embedding, ``tki.json`` ``artifacts``) or ``"text"`` (token
ids -> embedding in the same space, ``tki.json`` ``text.artifacts``; :data:`TEXT_ARTIFACTS`). Text artifacts
are fp32 only: the text graph is validated against ``TKIModel.encode_text`` in float64 at the fp32 threshold.
"""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ArtifactKind", "ARTIFACT_KINDS", "ONNX", "TENSORRT_PLAN", "PRECISIONS", "artifact_kind",
           "parity_threshold", "batch_invariant", "PARITY_FILE", "ONNXRUNTIME", "OPENVINO", "TENSORRT", "IMAGE",
           "TEXT", "TEXT_ARTIFACTS"]

ONNX = "onnx"
TENSORRT_PLAN = "tensorrt_plan"
#: Runtimes (engines) an artifact can name.
ONNXRUNTIME, OPENVINO, TENSORRT = "onnxruntime", "openvino", "tensorrt"
#: Roles: what an artifact embeds.
IMAGE, TEXT = "image", "text"
#: ``parity.json``: the validation report written beside the artifacts.
PARITY_FILE = "parity.json"


@dataclass(frozen=True)
class ArtifactKind:
    """One kind of exported file: ``key`` in ``tki.json``'s ``artifacts``, the ``file`` name, its ``format``
    (``"onnx"`` or ``"tensorrt_plan"``), numeric ``precision``, ``parity_threshold`` (min cosine vs torch) and
    the ``runtime`` that executes it (``"onnxruntime"``, ``"openvino"`` or ``"tensorrt"``), and its ``role``
    (``"image"`` or ``"text"``)."""

    key: str
    file: str
    format: str
    precision: str
    parity_threshold: float
    runtime: str
    role: str = IMAGE


ARTIFACT_KINDS: dict[str, ArtifactKind] = {
    k.key: k for k in (
        ArtifactKind("fp32", "model.onnx", ONNX, "fp32", 0.99999, ONNXRUNTIME),
        ArtifactKind("fp16", "model.fp16.onnx", ONNX, "fp16", 0.999, ONNXRUNTIME),
        ArtifactKind("int8", "model.int8.onnx", ONNX, "int8", 0.99, ONNXRUNTIME),
        ArtifactKind("tensorrt_fp16", "model.plan", TENSORRT_PLAN, "fp16", 0.999, TENSORRT),
        ArtifactKind("openvino_int8", "model.ov.int8.onnx", ONNX, "int8", 0.99, OPENVINO),
        ArtifactKind("text_fp32", "text.onnx", ONNX, "fp32", 0.99999, ONNXRUNTIME, TEXT),
    )
}

#: The onnxruntime precisions ``tki-export --precision`` accepts, in build order (fp32 first: the others derive
#: from it). The OpenVINO int8 artifact has its own flag (``--openvino``).
PRECISIONS: tuple[str, ...] = tuple(k for k, a in ARTIFACT_KINDS.items()
                                    if a.format == ONNX and a.runtime == ONNXRUNTIME and a.role == IMAGE)
#: The text artifacts (``tki.json`` ``text.artifacts``), in build order.
TEXT_ARTIFACTS: tuple[str, ...] = tuple(k for k, a in ARTIFACT_KINDS.items() if a.role == TEXT)


def artifact_kind(key: str) -> ArtifactKind:
    """The kind of an artifact key; candidates such as ``int8:dynamic`` use their base key's (``int8``)."""
    base = key.split(":", 1)[0]
    try:
        return ARTIFACT_KINDS[base]
    except KeyError:
        raise KeyError(f"unknown artifact {key!r}; known: {', '.join(ARTIFACT_KINDS)}") from None


def parity_threshold(key: str) -> float:
    """Min cosine against the torch reference that the artifact ``key`` must reach."""
    return artifact_kind(key).parity_threshold


def batch_invariant(key: str, entry: dict | None) -> bool:
    """Whether artifact ``key`` (its ``tki.json`` record ``entry``) gives each image the same vector whatever
    else is in its batch (up to float rounding): the recorded ``batch_invariant`` when the export wrote one;
    otherwise (older exports) False for int8 of ``scheme == "dynamic"`` (activations quantised with one scale
    per batch tensor), True for everything else (fp32, fp16, static int8, TensorRT, OpenVINO NNCF int8)."""
    entry = entry if isinstance(entry, dict) else {}
    rec = entry.get("batch_invariant")
    if isinstance(rec, bool):
        return rec
    return entry.get("scheme") != "dynamic"
