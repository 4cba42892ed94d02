"""The whole export: fused model -> fp32 / fp16 / int8 ONNX (+ TensorRT) -> parity -> ``tki.json``.

:func:`run_export` is what ``tki-export`` runs. Steps, each checked before the next:

1. build the model (``TKIModel.from_checkpoint`` or ``TKIModel.vanilla`` for ``head="none"``);
2. real images (``calib_images``, else ``$TKI_PACS_DIR``, else PACS beside the repository, else generated
   images; the choice is printed, and recorded in ``tki.json`` and ``parity.json``) through the
   model's exact preprocessing: the first ``calib_count`` calibrate int8, ``val_count`` others (disjoint
   when the folder has enough) validate; plus as many standard-normal tensors; float64 references;
3. ``model.onnx`` (standard ONNX, dynamic batch), validated;
4. ``model.fp16.onnx`` (fp16 weights and compute, fp32 I/O and head), validated;
5. int8: the onnxruntime-fused fp32 graph quantised with each scheme (dynamic, static QDQ), each candidate
   validated and timed (batch ``bench_batch``, ``threads`` threads, interleaved rounds); the fastest that
   meets the int8 threshold and is batch-invariant (static; a dynamic scheme only when no static one
   passes) becomes ``model.int8.onnx``; ``tki.json`` records the scheme, ``batch_invariant`` and all
   candidates;
6. optionally ``model.plan`` (TensorRT fp16), validated with the runtime's TensorRT runner;
3b. unless ``text=False``: the text artifact (``text.onnx`` + vocabulary + domain vectors, :mod:`.text`),
   validated against ``TKIModel.encode_text``; recorded under ``tki.json`` ``text``;
6b. optionally (``openvino``) ``model.onnx`` validated on OpenVINO (recorded under the fp32 artifact's
   ``engines``) and ``model.ov.int8.onnx`` quantised with NNCF on the calibration images
   (:mod:`.openvino_int8`), validated and timed on OpenVINO;
7. ``parity.json`` always; ``tki.json`` only when every artifact passed (or ``allow_parity_failure``);
   optionally a Triton repository.

Every artifact is built and validated in a temporary folder inside ``out`` (``out/.tki-export-*``, removed
afterwards). Only when all of them passed are they moved into ``out`` with ``os.replace``, ``tki.json`` last
(artifact files the earlier ``tki.json`` listed and the new one does not are then removed). So a failed
re-export leaves a working export in ``out`` as it was: its artifacts and ``tki.json`` are untouched.

``out`` must be new, empty, or an export (it holds ``tki.json`` or ``parity.json``); any other folder is
refused (:class:`OutFolderError`) unless ``overwrite``, and even then only the files tki-export writes are
replaced or removed (the artifact table's file names, ``tki.json``, ``parity.json``): a user's other files
stay. Staging folders: each export holds an exclusive ``flock`` on ``<stage>/.lock`` while it runs; a new
export first removes every ``.tki-export-*`` folder whose lock nobody holds (its export was killed), and
lock-less ones (from older versions) once they are an hour old (:func:`clean_stale_staging`).
A failed artifact raises :class:`~.validate.ParityError` after ``parity.json`` (the failed run's report) is
written, unless ``allow_parity_failure`` keeps it with a warning.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tki_sdk.common.artifacts import (
    ARTIFACT_KINDS,
    ONNX,
    OPENVINO,
    PARITY_FILE,
    PRECISIONS,
)
from tki_sdk.common.atomic import atomic_write_json
from tki_sdk.common.model_metadata import (
    METADATA_FILE,
    ModelMetadata,
    PreprocessConfig,
    sha256_file,
)
from tki_sdk.common.progress import progress_bar
from tki_sdk.common.versions import (
    EXPORT_DISTRIBUTIONS,
    TRAIN_DISTRIBUTIONS,
    package_versions,
)
from tki_sdk.export.calibration import default_image_source, find_images, load_images
from tki_sdk.export.fused import load_model
from tki_sdk.export.onnx_export import (
    DEFAULT_OPSET,
    ExportError,
    export_onnx,
    graph_info,
    load_proto,
    ort_fused_graph,
    tail_nodes,
)
from tki_sdk.export.openvino_int8 import quantize_openvino_int8
from tki_sdk.export.quantize import (
    convert_fp16,
    head_nodes,
    quantize_int8_dynamic,
    quantize_int8_static,
)
from tki_sdk.export.tensorrt import build_engine
from tki_sdk.export.text import (
    TEXT_FILES,
    TextUnsupported,
    export_text,
    text_file_names,
)
from tki_sdk.export.validate import (
    THRESHOLDS,
    OrtRunner,
    ParityError,
    ParityResult,
    build_inputs,
    generated_images,
    measure_interleaved,
    validate_runner,
)

__all__ = ["ExportConfig", "ExportResult", "run_export", "validate_export", "PRECISIONS", "ARTIFACT_FILES", "PARITY_FILE",
           "OutFolderError", "check_out_folder", "clean_stale_staging", "WRITTEN_FILES"]

#: File name of each artifact key (from the artifact table, :data:`tki_sdk.common.artifacts.ARTIFACT_KINDS`).
ARTIFACT_FILES = {k: a.file for k, a in ARTIFACT_KINDS.items()}
#: Every file name tki-export writes into ``out``: the only ones it ever replaces or removes there.
WRITTEN_FILES = frozenset({*ARTIFACT_FILES.values(), *TEXT_FILES, METADATA_FILE, PARITY_FILE})
STAGING_PREFIX = ".tki-export-"
STAGING_LOCK = ".lock"
#: Age (seconds) after which a staging folder without a lock file (older tki-export) counts as stale.
STALE_UNLOCKED_AGE_S = 3600


class OutFolderError(ValueError):
    """``--out`` is a folder that is not an export (and ``overwrite`` was not given)."""


def check_out_folder(out: Path, overwrite: bool = False) -> None:
    """Refuse an ``out`` that is a file, or a non-empty folder that is not an export, unless ``overwrite``.

    An export folder holds ``tki.json`` or ``parity.json`` (written by tki-export, also by a failed run);
    staging folders and the TensorRT timing cache do not count as content.
    """
    if out.exists() and not out.is_dir():
        raise OutFolderError(f"--out {out} is a file, not a folder; choose another --out")
    if not out.is_dir() or overwrite:
        return
    names = [c.name for c in out.iterdir()
             if not c.name.startswith((STAGING_PREFIX, ".tki-write-test-")) and c.name != "tensorrt.timing.cache"]
    if not names or METADATA_FILE in names or PARITY_FILE in names:
        return
    mine = sorted(n for n in names if n in WRITTEN_FILES)
    shown = ", ".join(sorted(names)[:4]) + (", ..." if len(names) > 4 else "")
    raise OutFolderError(
        f"--out {out} is not an export folder (no {METADATA_FILE}) and holds other files ({shown}); choose a new "
        f"or empty folder, or pass --overwrite to replace only the files tki-export writes"
        + (f" (here: {', '.join(mine)})" if mine else "") + "; other files are kept")


def clean_stale_staging(out: Path) -> list[Path]:
    """Remove staging folders of killed exports under ``out`` (see the module docstring); returns them."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: only the age rule
        fcntl = None  # type: ignore[assignment]
    removed = []
    for d in sorted(out.glob(STAGING_PREFIX + "*")):
        if d.is_symlink() or not d.is_dir():
            continue
        lock = d / STAGING_LOCK
        if lock.is_file() and fcntl is not None:
            try:
                fd = os.open(lock, os.O_RDWR)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # a running export holds it
                shutil.rmtree(d, ignore_errors=True)
            finally:
                os.close(fd)
        else:
            try:
                age = time.time() - d.stat().st_mtime
            except OSError:
                continue
            if age <= STALE_UNLOCKED_AGE_S:
                continue  # may be an export that is just starting
            shutil.rmtree(d, ignore_errors=True)
        if not d.exists():
            removed.append(d)
    return removed


@contextlib.contextmanager
def _staging(out: Path):
    """A new staging folder inside ``out``, locked (``flock`` on ``.lock``) for as long as the export runs."""
    stage = Path(tempfile.mkdtemp(dir=out, prefix=STAGING_PREFIX))
    fd = os.open(stage / STAGING_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover
            pass
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        os.close(fd)


@dataclass
class ExportConfig:
    """Options of one export (the ``tki-export`` flags)."""

    out: Path
    checkpoint: Path | None = None
    precisions: tuple[str, ...] = PRECISIONS
    head: str = "tki"
    model_name: str | None = None
    pretrained: str | None = None
    tensorrt: bool = False
    openvino: bool = False
    calib_images: Path | None = None
    calib_count: int = 64
    val_count: int = 16
    opset: int = DEFAULT_OPSET
    max_batch: int = 64
    triton_repo: Path | None = None
    allow_parity_failure: bool = False
    int8_schemes: tuple[str, ...] = ("dynamic", "static_qdq")
    threads: int = 2
    bench_batch: int = 16
    timing_rounds: int = 3
    time_torch: bool = True
    progress: bool = True
    seed: int = 0
    overwrite: bool = False
    #: What the embedding is (``TKIModel.set_embedding``): "cosine" (unit vectors) or "ball" (raw ball point).
    embedding: str = "cosine"
    #: How embeddings are compared: None = the embedding's default ("cos"; "poincare" for "ball"), or "ip".
    metric: str | None = None
    #: Also export the text encoder (``tki-export --no-text``: False).
    text: bool = True

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad:
            raise ValueError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
        if "fp32" not in self.precisions:
            # every variant derives from (and the runtime falls back to) the fp32 graph
            self.precisions = ("fp32", *self.precisions)


@dataclass
class ExportResult:
    """What an export produced: metadata (None when not written), parity, summary rows, warnings."""

    out: Path
    metadata: ModelMetadata | None
    parity: dict[str, ParityResult]
    rows: list[dict[str, Any]]
    warnings: list[str] = field(default_factory=list)
    failures: list[ParityResult] = field(default_factory=list)
    seconds: float = 0.0
    images: dict[str, Any] = field(default_factory=dict)


def _versions() -> dict[str, str]:
    """Installed versions of the training and the export packages (recorded in ``tki.json``)."""

    return package_versions(TRAIN_DISTRIBUTIONS + EXPORT_DISTRIBUTIONS)


class _Steps:
    """Progress over the export steps (descriptions say what runs): a bar on a terminal, one line per step
    elsewhere (:mod:`tki_sdk.common.progress`)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.bar = progress_bar(total, "tki-export", unit="step", enabled=enabled, interval=0.0)

    def start(self, desc: str) -> None:
        self.bar.set_description_str(desc)

    def done(self) -> None:
        self.bar.update(1)

    def close(self) -> None:
        self.bar.close()


def _images(cfg: ExportConfig, preprocess: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """(calibration pixels, validation pixels, image source). The source (recorded in ``tki.json`` and
    ``parity.json`` and printed by ``tki-export``) says which images were used: ``folder`` (None for generated
    images), ``origin`` (``--calib-images``, ``$TKI_PACS_DIR``, ``PACS beside the repository`` or
    ``generated``), ``files`` in the folder, ``calibration`` / ``validation`` counts, and ``description``."""

    if cfg.calib_images is not None:
        folder, origin = Path(cfg.calib_images), "--calib-images"
    else:
        folder, origin = default_image_source()
    want_cal = int(cfg.calib_count) if "int8" in cfg.precisions or cfg.openvino else 0
    want_val = int(cfg.val_count)
    if folder is not None:
        n_files = len(find_images(folder))
        s = load_images(folder, preprocess, count=want_cal + want_val, seed=cfg.seed)
        px = s.pixels
        if px.shape[0] >= want_cal + want_val:
            cal, val = px[:want_cal], px[want_cal:want_cal + want_val]
        else:  # small folder: validation overlaps calibration
            cal, val = px[:want_cal] if want_cal else px[:0], px[-want_val:] if want_val else px[:0]
        desc = (f"{folder} ({origin}; {n_files} images; {len(cal)} for calibration, {len(val)} for validation"
                + (", overlapping" if px.shape[0] < want_cal + want_val and want_cal else "") + ")")
        return cal, val, {"folder": str(folder), "origin": origin, "files": n_files, "calibration": int(len(cal)),
                          "validation": int(len(val)), "description": desc}
    gen = generated_images(want_cal + want_val, preprocess, seed=cfg.seed)
    cal, val = gen[:want_cal], gen[want_cal:]
    desc = f"generated images, seed {cfg.seed} ({origin}); {len(cal)} for calibration, {len(val)} for validation"
    return cal, val, {"folder": None, "origin": "generated", "files": 0, "calibration": int(len(cal)),
                      "validation": int(len(val)), "description": desc}


def _time_interleaved(runners: dict[str, Callable[[np.ndarray], Any]], x: np.ndarray, rounds: int) -> dict[str, dict[str, float]]:
    """Per-image wall time of each runner on ``x`` from :func:`~.validate.measure_interleaved` (one warm-up each,
    then ``rounds`` rounds of one call per runner): median and best ms per image."""
    times = measure_interleaved({k: (lambda run=run: run(x)) for k, run in runners.items()}, rounds)
    n = x.shape[0]
    return {k: {"ms_per_image": 1000 * float(np.median(v)) / n, "best_ms_per_image": 1000 * float(min(v)) / n,
                "rounds": len(v), "batch_size": int(n)} for k, v in times.items()}


class _ExportRun:
    """One export in progress: the state the steps share, one method per step (see the module docstring).

    Every artifact is built and validated in ``stage`` (inside ``out``, so the final moves are atomic renames
    on one filesystem); only a fully validated export replaces what ``out`` holds, ``tki.json`` last.
    """

    def __init__(self, cfg: ExportConfig, stage: Path, steps: _Steps) -> None:
        self.cfg = cfg
        self.stage = stage
        self.work = stage / "work"
        self.work.mkdir()
        self.steps = steps
        self.warnings: list[str] = []
        self.parity: dict[str, ParityResult] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}
        self.runners: dict[str, Callable[[np.ndarray], Any]] = {}
        self.extra_parity: dict[str, Any] = {}
        self.timing: dict[str, dict[str, float]] = {}
        self.metadata: ModelMetadata | None = None
        self.text_export: Any = None
        #: The text artifact's parity when it missed and was left out (``parity.json`` records it).
        self.text_dropped: ParityResult | None = None

    def path(self, key: str) -> Path:
        """Where artifact ``key`` is built (its file name from the artifact table)."""
        return self.stage / ARTIFACT_KINDS[key].file

    def _record(self, key: str, path: Path, runner: Callable[[np.ndarray], Any], result: ParityResult,
                **extra: Any) -> None:
        kind = ARTIFACT_KINDS[key]
        self.parity[key] = result
        self.runners[key] = runner
        self.artifacts[key] = {"file": path.name, "bytes": path.stat().st_size, "sha256": sha256_file(path),
                               "precision": kind.precision, "format": kind.format, "runtime": kind.runtime,
                               **extra}

    # ---------------------------------------------------------------- steps
    def load(self, model: Any | None) -> None:

        cfg = self.cfg
        self.steps.start("load model")
        self.model = model if model is not None else load_model(
            cfg.checkpoint, head=cfg.head, model_name=cfg.model_name, pretrained=cfg.pretrained)
        self.model.set_embedding(cfg.embedding, cfg.metric)  # output_space and metric of tki.json
        self.fields = self.model.metadata_fields()
        self.steps.done()

    def reference(self) -> None:
        cfg = self.cfg
        self.steps.start("images + float64 reference")
        self.cal, val, self.images = _images(cfg, self.fields["preprocess"])
        self.inputs = build_inputs(self.model, val, image_source=self.images["description"],
                                   large_batch=min(8, cfg.max_batch), seed=cfg.seed)
        self.steps.done()

    def fp32(self) -> None:

        cfg = self.cfg
        self.steps.start(f"fp32: export ONNX (opset {cfg.opset})")
        p = self.path("fp32")
        self.info = info = export_onnx(self.model, p, opset=cfg.opset)
        self.rewrites = dict(info.extra.get("rewrites", {}))
        if set(cfg.precisions) - {"fp32"} or cfg.tensorrt:  # the head must be findable to stay float32
            head_nodes(load_proto(p), self.fields["head"], "model.onnx")
        r = OrtRunner(p, threads=cfg.threads)
        self._record("fp32", p, r.run, validate_runner("fp32", p.name, r.run, self.inputs),
                     opset=info.opset, domains=info.domains, standard_ops_only=info.standard,
                     input_shape=info.input_shape, output_shape=info.output_shape)
        self.steps.done()

    def text(self) -> None:
        """The text artifact (:mod:`.text`); a CLIP whose text side is not CLIP's is skipped with a warning."""

        self.steps.start("text: export + validate the text encoder")
        try:
            self.text_export = export_text(self.model, self.stage, opset=self.cfg.opset, threads=self.cfg.threads)
        except TextUnsupported as e:
            self.warnings.append(str(e))
        te = self.text_export
        if te is not None and not te.parity.passed and not self.cfg.allow_parity_failure:
            # the text artifact is an addition to the image export: one that misses parity is left out (and
            # recorded in parity.json), never shipped, and never the reason the image artifacts are not
            self.text_dropped = te.parity
            self.text_export = None
            self.warnings.append(f"text artifact not exported: {te.parity.failure_line()}; this export cannot "
                                 "search by text (parity.json has the details)")
        self.steps.done()

    def _text_failures(self) -> list[ParityResult]:
        te = self.text_export
        return [te.parity] if te is not None and not te.parity.passed else []

    def fp16(self) -> None:

        self.steps.start("fp16: convert (fp32 I/O and head)")
        p = self.path("fp16")
        conv = convert_fp16(self.path("fp32"), p, head=self.fields["head"])
        r = OrtRunner(p, threads=self.cfg.threads)
        i16 = graph_info(p)
        self._record("fp16", p, r.run, validate_runner("fp16", p.name, r.run, self.inputs),
                     opset=i16.opset, domains=i16.domains, io_dtype="float32", **conv)
        self.steps.done()

    def _int8_source(self) -> tuple[Path, dict[str, int]]:
        """The onnxruntime-fused fp32 graph (validated), or the standard graph when fusion fails."""
        fp32_path, src = self.path("fp32"), self.work / "fused_fp32.onnx"
        try:
            fusions = ort_fused_graph(fp32_path, src)
            if not tail_nodes(load_proto(src)) and tail_nodes(load_proto(fp32_path)):
                raise ExportError("fusion lost the head's node scopes")
            check = validate_runner("fp32", "fused", OrtRunner(src, threads=self.cfg.threads).run, self.inputs)
            if not check.passed:
                raise ExportError(check.failure_line())
            return src, fusions
        except Exception as e:  # noqa: BLE001 - fall back to the standard graph
            self.warnings.append(f"int8: onnxruntime fusions skipped ({type(e).__name__}: {str(e)[:160]}); "
                                 "quantising the standard graph")
            shutil.copyfile(fp32_path, src)
            return src, {}

    def int8(self) -> None:

        cfg = self.cfg
        self.steps.start("int8: onnxruntime fusions + quantise")
        src, fusions = self._int8_source()
        cands: dict[str, dict[str, Any]] = {}
        cand_runners: dict[str, Callable[[np.ndarray], Any]] = {}
        for scheme in cfg.int8_schemes:
            p = self.work / f"int8_{scheme}.onnx"
            try:
                if scheme == "dynamic":
                    qinfo = quantize_int8_dynamic(src, p, per_channel=False, head=self.fields["head"])
                elif scheme == "static_qdq":
                    if self.cal.shape[0] == 0:
                        continue
                    qinfo = quantize_int8_static(src, p, self.cal, per_channel=True, head=self.fields["head"])
                else:
                    raise ValueError(f"unknown int8 scheme {scheme!r}")
            except Exception as e:  # noqa: BLE001 - one scheme failing leaves the other
                self.warnings.append(f"int8 {scheme}: quantisation failed ({type(e).__name__}: {str(e)[:160]})")
                continue
            rq = OrtRunner(p, threads=cfg.threads)
            res = validate_runner(f"int8:{scheme}", p.name, rq.run, self.inputs)
            cands[scheme] = {"path": p, "info": qinfo, "parity": res}
            if res.passed:
                cand_runners[scheme] = rq.run
        self.steps.done()

        self.steps.start(f"int8: time candidates (batch {cfg.bench_batch}, {cfg.threads} threads)")
        xb = _bench_batch(self.inputs, cfg.bench_batch)
        timing = _time_interleaved(cand_runners, xb, cfg.timing_rounds) if len(cand_runners) > 1 else {}
        for k in cands:
            cands[k]["timing"] = timing.get(k)
        passing = [k for k in cands if cands[k]["parity"].passed]
        # a batch-invariant scheme wins over a faster batch-dependent one, which the runtime never picks itself
        steady = [k for k in passing if cands[k]["info"].get("batch_invariant", True)]
        if passing:
            pool = steady or passing
            chosen = min(pool, key=lambda k: (timing.get(k) or {}).get("ms_per_image", 0.0))
            why = ("fastest batch-invariant candidate meeting the int8 threshold" if len(steady) > 1
                   else "only batch-invariant candidate meeting the int8 threshold" if steady
                   else "fastest candidate meeting the int8 threshold (batch-dependent: used only when asked "
                        "for by name)" if len(passing) > 1
                   else "only candidate meeting the int8 threshold (batch-dependent: used only when asked for "
                        "by name)")
        elif cands:
            chosen = max(cands, key=lambda k: cands[k]["parity"].min_cosine)
            why = "no candidate met the int8 threshold; best parity kept"
        else:
            raise ExportError("int8: no quantisation scheme produced a model")
        p8 = self.path("int8")
        shutil.copyfile(cands[chosen]["path"], p8)
        res = cands[chosen]["parity"]
        i8 = graph_info(p8)
        cand_summary = {
            k: {"min_cosine": c["parity"].min_cosine, "pass": c["parity"].passed,
                "ms_per_image": (c.get("timing") or {}).get("ms_per_image"), **c["info"]}
            for k, c in cands.items()
        }
        self._record(
            "int8", p8, OrtRunner(p8, threads=cfg.threads).run,
            ParityResult(**{**res.__dict__, "artifact": "int8", "file": p8.name}),
            opset=i8.opset, domains=i8.domains, **cands[chosen]["info"], chosen_because=why, fusions=fusions,
            candidates=cand_summary,
            timed_on={"batch_size": cfg.bench_batch, "threads": cfg.threads} if timing else None,
            calibration={**self.images, "count": int(self.cal.shape[0]),
                         "used_by": "static_qdq (activation ranges)" if chosen == "static_qdq"
                         else "none (the shipped scheme needs no calibration)"})
        self.extra_parity["int8_candidates"] = {k: c["parity"].to_dict() for k, c in cands.items()}
        self.steps.done()

    def tensorrt(self) -> None:
        from tki_sdk.runtime.engine.tensorrt_runner import TensorRTRunner


        cfg = self.cfg
        self.steps.start(f"tensorrt: build fp16 engine (batch 1..{cfg.max_batch})")
        plan, fp32_path = self.path("tensorrt_fp16"), self.path("fp32")
        fp32_proto = load_proto(fp32_path)
        tail = set(tail_nodes(fp32_proto))
        keep = {o for n in fp32_proto.graph.node if n.name in tail for o in n.output}
        h, w = self.model.clip.image_size
        binfo = build_engine(fp32_path, plan, image_size=(h, w), max_batch=cfg.max_batch,
                             fp32_tensors=keep, timing_cache=cfg.out / "tensorrt.timing.cache")
        rt = TensorRTRunner(plan, "pixel_values", "embedding")
        self._record("tensorrt_fp16", plan, rt.run,
                     validate_runner("tensorrt_fp16", plan.name, rt.run, self.inputs, max_batch=cfg.max_batch),
                     max_batch=cfg.max_batch, **binfo)
        self.steps.done()

    def openvino_int8(self) -> None:
        """``model.onnx`` validated on OpenVINO (an extra engine of the fp32 artifact; a miss only keeps it from
        being chosen) and the NNCF int8 artifact, built, validated and run on OpenVINO."""
        from tki_sdk.runtime.engine.openvino_runner import OpenVINORunner


        cfg = self.cfg
        self.steps.start(f"openvino: fp32 parity + NNCF int8 ({self.cal.shape[0]} calibration images)")
        fp32_path = self.path("fp32")
        ov32 = OpenVINORunner(fp32_path, cfg.threads)
        r32 = validate_runner("fp32", f"{fp32_path.name} on OpenVINO", ov32.run, self.inputs)
        self.artifacts["fp32"].setdefault("engines", {})[OPENVINO] = {
            "parity_min_cosine": r32.min_cosine, "parity_pass": r32.passed, "version": ov32.version}
        self.extra_parity["engines"] = {"fp32:openvino": r32.to_dict()}
        if not r32.passed:
            self.warnings.append(f"OpenVINO fp32 not offered to the engine choice: {r32.failure_line()}")
        p = self.path("openvino_int8")
        qinfo = quantize_openvino_int8(fp32_path, p, self.cal, head=self.fields["head"])
        rq = OpenVINORunner(p, cfg.threads)
        self._record("openvino_int8", p, rq.run, validate_runner("openvino_int8", p.name, rq.run, self.inputs),
                     **qinfo, openvino=rq.version,
                     calibration={**self.images, "count": int(self.cal.shape[0]), "used_by": "NNCF ranges"})
        self.steps.done()

    def time_artifacts(self) -> None:

        cfg = self.cfg
        self.steps.start(f"time artifacts (batch {cfg.bench_batch}, {cfg.threads} threads)")
        xb = _bench_batch(self.inputs, cfg.bench_batch)
        timed = dict(self.runners)
        if cfg.time_torch:
            def torch_run(x: np.ndarray, _m: Any = self.model) -> Any:
                with torch.inference_mode():
                    return _m.encode_image(torch.from_numpy(x))

            timed = {"torch": torch_run, **timed}
        prev_threads = torch.get_num_threads()
        torch.set_num_threads(cfg.threads)
        try:
            cpu_runners = {k: v for k, v in timed.items() if k != "tensorrt_fp16"}
            self.timing = _time_interleaved(cpu_runners, xb, cfg.timing_rounds)
            if "tensorrt_fp16" in timed:
                self.timing.update(_time_interleaved({"tensorrt_fp16": timed["tensorrt_fp16"]}, xb,
                                                     cfg.timing_rounds))
        finally:
            torch.set_num_threads(prev_threads)
        for k, t in self.timing.items():
            if k in self.artifacts:
                self.artifacts[k]["ms_per_image"] = round(t["ms_per_image"], 4)
        self.steps.done()

    def write(self) -> None:
        """``parity.json`` always; ``tki.json`` and the artifacts into ``out`` only when parity passed (or
        ``allow_parity_failure``)."""
        cfg, fields = self.cfg, self.fields
        self.steps.start("write tki.json + parity.json")
        failures = [r for r in self.parity.values() if not r.passed] + self._text_failures()
        te = self.text_export
        for k, r in self.parity.items():
            self.artifacts[k]["parity_min_cosine"] = r.min_cosine
            self.artifacts[k]["parity_pass"] = r.passed
        _write_json(cfg.out / PARITY_FILE, {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **self.inputs.describe(),
            "thresholds": THRESHOLDS,
            "passed": not failures,
            "artifacts": {k: r.to_dict() for k, r in self.parity.items()},
            **self.extra_parity,
            **({"text": {te.parity.artifact: te.parity.to_dict()}} if te is not None else {}),
            **({"text_not_exported": {self.text_dropped.artifact: self.text_dropped.to_dict()}}
               if self.text_dropped is not None else {}),
        })
        if not failures or cfg.allow_parity_failure:
            for r in failures:
                self.warnings.append(f"kept despite failed parity (--allow-parity-failure): {r.failure_line()}")
            self.metadata = md = ModelMetadata(
                model_name=fields["model_name"],
                embedding_dim=int(fields["embedding_dim"]),
                preprocess=PreprocessConfig.from_dict(fields["preprocess"]),
                head=fields["head"],
                output_space=fields["output_space"],
                metric=fields["metric"],
                head_config=fields["head_config"],
                weights=fields["weights"],
                checkpoint=fields["checkpoint"],
                opset=self.info.opset,
                artifacts=_clean(self.artifacts),
                default_precision="fp32",
                versions=_versions(),
                text=None if te is None else _clean(te.record),
                extra={
                    "export": {
                        "tool": "tki-export",
                        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                        "exporter": "torch.onnx.export(dynamo=True)" if self.info.opset >= 18
                        else "torch.onnx.export(dynamo=False)",
                        "rewrites": self.rewrites,
                        "fused": "pixel_values -> TKIModel.encode_image -> embedding",
                        "parity_file": PARITY_FILE,
                        "parity_passed": not failures,
                        "images": self.images,
                    },
                },
            )
            md.save(self.stage)
            _install(self.stage, cfg.out, [a["file"] for a in self.artifacts.values()]
                     + (te.files if te is not None else []), overwrite=cfg.overwrite)
        self.steps.done()

    def summary_rows(self) -> list[dict[str, Any]]:
        rows = []
        for k in ([*self.artifacts] if not self.cfg.time_torch else ["torch", *self.artifacts]):
            t = self.timing.get(k)
            if k == "torch":
                rows.append({"artifact": "torch eager fp32 (reference)", "file": "-", "bytes": None,
                             "min_cosine": None, "pass": None, "ms_per_image": t and t["ms_per_image"]})
                continue
            a = self.artifacts[k]
            label = k + (f" ({a['scheme']})" if k == "int8" else "")
            rows.append({"artifact": label, "file": a["file"], "bytes": a["bytes"],
                         "min_cosine": self.parity[k].min_cosine, "threshold": self.parity[k].threshold,
                         "pass": self.parity[k].passed, "ms_per_image": t and t["ms_per_image"]})
        te = self.text_export
        if te is not None:
            a = te.record["artifacts"][te.parity.artifact]
            rows.append({"artifact": te.parity.artifact, "file": a["file"], "bytes": a["bytes"],
                         "min_cosine": te.parity.min_cosine, "threshold": te.parity.threshold,
                         "pass": te.parity.passed, "ms_per_image": None})
        return rows


def run_export(cfg: ExportConfig, model: Any | None = None) -> ExportResult:
    """Run the export described by ``cfg`` (see module docstring), one step per artifact. ``model``: an
    in-memory ``TKIModel`` to export instead of building one from ``cfg`` (checkpoint / head / model name are
    then ignored)."""
    t_start = time.perf_counter()
    check_out_folder(cfg.out, cfg.overwrite)
    cfg.out.mkdir(parents=True, exist_ok=True)
    stale = clean_stale_staging(cfg.out)
    n_steps = 4 + bool(cfg.text) + ("fp16" in cfg.precisions) + 2 * ("int8" in cfg.precisions) + bool(cfg.tensorrt) + 1 + cfg.openvino
    steps = _Steps(n_steps, cfg.progress)
    with _staging(cfg.out) as stage:
        run = _ExportRun(cfg, stage, steps)
        if stale:
            run.warnings.append(f"removed {len(stale)} staging folder(s) of killed exports: "
                                + ", ".join(d.name for d in stale))
        try:
            run.load(model)
            run.reference()
            run.fp32()
            if cfg.text:
                run.text()
            if "fp16" in cfg.precisions:
                run.fp16()
            if "int8" in cfg.precisions:
                run.int8()
            if cfg.tensorrt:
                run.tensorrt()
            if cfg.openvino:
                run.openvino_int8()
            run.time_artifacts()
            run.write()
        finally:
            steps.close()

    failures = [r for r in run.parity.values() if not r.passed] + run._text_failures()
    result = ExportResult(cfg.out, run.metadata, run.parity, run.summary_rows(), run.warnings, failures,
                          time.perf_counter() - t_start, run.images)
    if failures and not cfg.allow_parity_failure:
        raise ParityError(failures)
    if cfg.triton_repo is not None and run.metadata is not None:
        from tki_sdk.export.triton import write_triton_repo

        write_triton_repo(cfg.triton_repo, cfg.out, max_batch=cfg.max_batch)
    return result


def validate_export(
    export_dir: str | os.PathLike,
    model: Any | None = None,
    *,
    images: np.ndarray | None = None,
    image_source: str = "given",
    threads: int = 2,
    precisions: tuple[str, ...] | None = None,
    raise_on_failure: bool = True,
) -> dict[str, ParityResult]:
    """Re-check an existing export folder against the model (default: rebuilt from the checkpoint recorded in
    ``tki.json``, or vanilla CLIP for head "none"): every ONNX artifact listed there (or ``precisions``) is
    validated as at export time, on ``images`` (default: generated images) and random tensors. A file whose
    SHA-256 differs from ``tki.json`` is validated all the same (the numbers decide) and noted in the
    result's ``notes``. Raises :class:`ParityError` naming each failing artifact."""

    export_dir = Path(export_dir)
    md = ModelMetadata.load(export_dir)
    if model is None:
        ck = (md.checkpoint or {}).get("path")
        w = md.weights or {}
        pretrained = w.get("ref") if w.get("source") in ("file", "tag") else None
        if md.head == "tki":
            if not ck:
                raise ExportError(f"{export_dir / METADATA_FILE} records no checkpoint; pass the model")
            model = load_model(ck, head="tki", pretrained=pretrained)
        else:
            model = load_model(None, head="none", model_name=md.model_name, pretrained=pretrained)
    if images is None:
        images = generated_images(8, md.preprocess.to_dict())
        image_source = "generated images"
    inputs = build_inputs(model, images, image_source=image_source)
    results: dict[str, ParityResult] = {}
    for key, art in (md.artifacts or {}).items():
        if precisions and key not in precisions:
            continue
        f = export_dir / str(art.get("file", ""))
        fmt = art.get("format") or ARTIFACT_KINDS.get(key, ARTIFACT_KINDS["fp32"]).format
        if fmt != ONNX:
            continue
        try:
            if (art.get("runtime") or ARTIFACT_KINDS.get(key, ARTIFACT_KINDS["fp32"]).runtime) == OPENVINO:
                from tki_sdk.runtime.engine.openvino_runner import OpenVINORunner

                runner: Any = OpenVINORunner(f, threads)
            else:
                runner = OrtRunner(f, threads=threads)
        except Exception as e:  # noqa: BLE001 - an unloadable file is a failed artifact
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            results[key] = ParityResult(key, f.name, THRESHOLDS.get(key.split(":", 1)[0], THRESHOLDS["fp32"]), float("nan"),
                                        float("nan"), float("nan"), False, "-", {}, [1, 8], error=first[:300])
            continue
        res = validate_runner(key, f.name, runner.run, inputs)
        if art.get("sha256") and f.is_file() and sha256_file(f) != art["sha256"]:
            res.notes.append(f"{f.name} differs from the file tki.json lists (sha256 mismatch)")
        results[key] = res
    failures = [r for r in results.values() if not r.passed]
    if failures and raise_on_failure:
        raise ParityError(failures)
    return results


def _listed_files(folder: Path) -> set[str]:
    """Artifact file names the ``tki.json`` in ``folder`` lists (only names of the artifact table)."""
    try:
        md = json.loads((folder / METADATA_FILE).read_text(encoding="utf-8"))
        arts = md.get("artifacts") or {}
        return ({a.get("file") for a in arts.values() if isinstance(a, dict)} & set(ARTIFACT_FILES.values())) \
            | text_file_names(md.get("text"))
    except (OSError, ValueError, AttributeError):
        return set()


def _install(stage: Path, out: Path, files: list[str], overwrite: bool = False) -> None:
    """Move the validated ``files`` and then ``tki.json`` from ``stage`` into ``out`` (``os.replace``: each file
    is either the old or the new one, never partly written), then remove the artifact files the earlier
    ``tki.json`` listed and the new one does not (with ``overwrite``: every artifact-table file the new one
    does not list). Files tki-export does not write are never touched."""
    stale = _listed_files(out) | (set(ARTIFACT_FILES.values()) | TEXT_FILES if overwrite else set())
    for name in files:
        os.replace(stage / name, out / name)
    os.replace(stage / METADATA_FILE, out / METADATA_FILE)
    for name in sorted(stale - set(files)):
        (out / name).unlink(missing_ok=True)


def _bench_batch(inputs: Any, n: int) -> np.ndarray:
    """``n`` inputs for timing (validation images, repeated when fewer)."""
    x = inputs.groups["images"] if inputs.groups["images"].shape[0] else inputs.groups["random"]
    reps = -(-n // x.shape[0])
    return np.ascontiguousarray(np.concatenate([x] * reps)[:n])


def _clean(o: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, non-finite floats -> None, paths -> str."""
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        o = o.item()
    if isinstance(o, float) and not np.isfinite(o):
        return None
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def _write_json(path: Path, obj: Any) -> None:

    atomic_write_json(path, _clean(obj))
