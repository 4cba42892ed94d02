"""Which artifact on which engine runs fastest on this CPU: measured once, then cached.

``Embedder(model_dir)`` (``backend="auto"``, no ``precision``, CPU) asks :func:`choose_engine`:

1. **Candidates** (:func:`candidates`): every ``(artifact, engine)`` pair whose parity the export recorded as
   passed, on an engine installed here. An artifact's own runtime counts when its ``parity_pass`` is true; an
   extra engine (OpenVINO running ``model.onnx``) when ``artifacts[key]["engines"][engine]["parity_pass"]`` is
   true. TensorRT plans are GPU artifacts and never CPU candidates. A batch-dependent artifact
   (:func:`~tki_sdk.common.artifacts.batch_invariant`: per-tensor dynamic int8, whose vector for one image
   changes with its batch-mates) is never a candidate, however fast. No candidate: the export's default
   precision, as before (exports that record no parity, hand-written ``tki.json`` files).
2. **Measurement** (:func:`measure_candidates`): each candidate built as the Embedder would build it (same
   threads, onnxruntime without spinning), one warm-up call, then ``rounds`` interleaved rounds of one call
   each on a standard-normal batch of ``batch_size``; a candidate slower than half the best after the first
   round is dropped. img/s = batch / median call time. The fastest wins. On ViT-B/32 with 2 cores this takes
   about a minute on a busy machine (five candidates), once.
3. **Cache**: the choice is stored in ``engine_choice.json`` (:class:`EngineChoiceCache`) under
   ``$TKI_CACHE_DIR`` (default ``~/.cache/tki-sdk``), written atomically, keyed by the candidates' SHA-256s,
   the threads and the batch. The whole file applies to one CPU (:attr:`CpuInfo.key`: vendor, model, ISA
   flags) and one set of package versions (:data:`CHOICE_DISTRIBUTIONS`); a different CPU or a new version of
   any of them discards every cached choice. An unwritable cache folder only costs the next measurement.

An explicit ``backend`` or ``precision`` skips all of this (:class:`EngineChoice` ``source="explicit"`` is never
produced here: the Embedder simply does not ask).
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from tki_sdk.common.artifacts import (
    ONNXRUNTIME,
    OPENVINO,
    TENSORRT,
    artifact_kind,
    batch_invariant,
)
from tki_sdk.common.contract import ContractError, JsonContract, check_version
from tki_sdk.common.cpu import CpuInfo, cpu_info
from tki_sdk.common.model_metadata import ModelMetadata
from tki_sdk.common.versions import package_versions
from tki_sdk.runtime.engine.openvino_runner import openvino_version
from tki_sdk.runtime.engine.ort_session import OrtSession, SessionConfig

log = logging.getLogger(__name__)

__all__ = ["Candidate", "EngineChoice", "EngineChoiceCache", "candidates", "choose_engine", "measure_candidates",
           "installed_engines", "cache_dir", "CACHE_FILE", "CHOICE_DISTRIBUTIONS", "make_runner"]

CACHE_FILE = "engine_choice.json"
#: Packages whose versions decide the measured speeds; any change re-measures.
CHOICE_DISTRIBUTIONS = ("tki-sdk", "onnxruntime", "onnxruntime-gpu", "openvino", "numpy")
CPU_ENGINES = (ONNXRUNTIME, OPENVINO)


def cache_dir() -> Path:
    """``$TKI_CACHE_DIR``, else ``$XDG_CACHE_HOME/tki-sdk``, else ``~/.cache/tki-sdk``."""
    if os.environ.get("TKI_CACHE_DIR"):
        return Path(os.environ["TKI_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "tki-sdk"


def installed_engines() -> dict[str, str]:
    """``{engine: version}`` of the CPU engines that import here (onnxruntime, openvino)."""
    out: dict[str, str] = {}
    try:
        from tki_sdk.runtime.native import import_onnxruntime

        out[ONNXRUNTIME] = str(import_onnxruntime().__version__)
    except ImportError:
        pass

    v = openvino_version()
    if v:
        out[OPENVINO] = v
    return out


@dataclass(frozen=True)
class Candidate:
    """One artifact (``precision``: its key in ``tki.json``) on one ``engine``; ``file`` and its ``sha256``."""

    precision: str
    engine: str
    file: str
    sha256: str | None = None

    @property
    def label(self) -> str:
        return f"{self.engine}:{self.precision}"


@dataclass
class EngineChoice:
    """What the Embedder runs and why: ``precision`` (artifact key), ``engine``, ``reason`` (one sentence),
    ``source`` (``measured`` now, from ``cache``, or ``default``: nothing to choose between),
    ``images_per_s`` per candidate label (``engine:precision``) as measured, ``threads`` and ``batch_size`` of
    the measurement, ``cpu`` (model name), ``measured_at`` (UTC, ISO 8601)."""

    precision: str | None
    engine: str | None
    reason: str
    source: str
    images_per_s: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    batch_size: int | None = None
    cpu: str | None = None
    measured_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "EngineChoice":
        known = {k: d.get(k) for k in cls.__dataclass_fields__}
        known["images_per_s"] = {str(k): float(v) for k, v in (d.get("images_per_s") or {}).items()}
        known["reason"] = str(known.get("reason") or "")
        known["source"] = str(known.get("source") or "cache")
        return cls(**known)


@dataclass
class EngineChoiceCache(JsonContract):
    """``engine_choice.json``: ``format_version`` (1), ``cpu_key`` (:attr:`CpuInfo.key`), ``cpu`` (model name),
    ``versions`` (:data:`CHOICE_DISTRIBUTIONS` installed), ``choices`` (entry key -> :class:`EngineChoice`
    fields). Valid only for the CPU and versions it names (:meth:`matches`)."""

    FILE: ClassVar[str] = CACHE_FILE
    WHAT: ClassVar[str] = "engine choice cache"
    FIX: ClassVar[str] = "delete it; the next Embedder measures again"
    FORMAT_VERSION: ClassVar[int] = 1

    cpu_key: str
    cpu: str
    versions: dict[str, str]
    choices: dict[str, dict[str, Any]] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = CACHE_FILE) -> "EngineChoiceCache":
        v = check_version(d.get("format_version", 1), cls.FORMAT_VERSION, where)
        choices = d.get("choices") or {}
        if not isinstance(choices, dict):
            raise ContractError(f"{where}: 'choices' is not an object; {cls.FIX}")
        known = ("cpu_key", "cpu", "versions", "choices", "format_version")
        return cls(cpu_key=str(d.get("cpu_key", "")), cpu=str(d.get("cpu", "")),
                   versions={str(k): str(x) for k, x in (d.get("versions") or {}).items()},
                   choices=dict(choices), format_version=v, extra={k: x for k, x in d.items() if k not in known})

    def to_dict(self) -> dict[str, Any]:
        return self.with_extra({"format_version": self.format_version, "cpu_key": self.cpu_key, "cpu": self.cpu,
                                "versions": self.versions, "choices": self.choices}, self.extra)

    def matches(self, cpu: CpuInfo, versions: dict[str, str]) -> bool:
        return self.cpu_key == cpu.key and self.versions == versions


def candidates(metadata: ModelMetadata, model_dir: Path, engines: Sequence[str]) -> list[Candidate]:
    """The ``(artifact, engine)`` pairs that may be chosen (see the module docstring), in ``tki.json`` order."""
    out: list[Candidate] = []
    for key, art in (metadata.artifacts or {}).items():
        fname = art.get("file")
        if not fname or not (model_dir / str(fname)).is_file():
            continue
        try:
            own = str(art.get("runtime") or artifact_kind(key).runtime)
        except KeyError:
            own = ONNXRUNTIME
        if own == TENSORRT:
            continue
        if not batch_invariant(key, art):
            log.info("engine choice: %s is batch-dependent (%s int8); not a candidate", key, art.get("scheme"))
            continue
        pairs = [(own, art.get("parity_pass") is True)]
        for eng, rec in (art.get("engines") or {}).items():
            if eng != own and isinstance(rec, dict):
                pairs.append((str(eng), rec.get("parity_pass") is True))
        for eng, passed in pairs:
            if passed and eng in engines and eng in CPU_ENGINES:
                out.append(Candidate(key, eng, str(fname), art.get("sha256")))
    return out


def make_runner(c: Candidate, model_dir: Path, metadata: ModelMetadata, threads: int | None) -> Callable[[np.ndarray], Any]:
    """``run(x)`` of one candidate, built as the Embedder builds it (CPU, ``threads``, no spinning)."""
    path = model_dir / c.file
    if c.engine == OPENVINO:
        from tki_sdk.runtime.engine.openvino_runner import OpenVINORunner

        return OpenVINORunner(path, threads, input_name=metadata.input_name, output_name=metadata.output_name).run

    s = OrtSession(path, SessionConfig(device="cpu", threads=threads, spin=False, io_binding=False,
                                       input_name=metadata.input_name, output_name=metadata.output_name))
    return s.run


def measure_candidates(cands: Sequence[Candidate], model_dir: Path, metadata: ModelMetadata, threads: int | None,
                       batch_size: int = 8, rounds: int = 3,
                       runner_factory: Callable[..., Callable[[np.ndarray], Any]] = make_runner) -> dict[str, float]:
    """img/s of each candidate (see the module docstring); a candidate that fails to build or run is left out
    (logged)."""
    h, w = metadata.preprocess.size
    x = np.random.default_rng(0).standard_normal((batch_size, 3, h, w)).astype(np.float32)
    runners: dict[str, Callable[[np.ndarray], Any]] = {}
    for c in cands:
        try:
            run = runner_factory(c, model_dir, metadata, threads)
            run(x)  # warm-up
            runners[c.label] = run
        except Exception as e:  # noqa: BLE001 - a candidate that cannot run is not chosen
            log.warning("engine choice: %s cannot run here (%s: %s)", c.label, type(e).__name__, str(e)[:200])
    times: dict[str, list[float]] = {k: [] for k in runners}
    live = list(runners)
    for r in range(max(1, rounds)):
        for k in live:
            t0 = time.perf_counter()
            runners[k](x)
            times[k].append(time.perf_counter() - t0)
        if r == 0 and len(live) > 1:
            best = min(times[k][0] for k in live)
            live = [k for k in live if times[k][0] <= 2.0 * best]
    return {k: batch_size / float(np.median(v)) for k, v in times.items() if v}


def _entry_key(cands: Sequence[Candidate], threads: int | None, batch_size: int) -> str:
    blob = json.dumps([[c.precision, c.engine, c.sha256 or c.file] for c in cands] + [threads, batch_size])
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def choose_engine(
    metadata: ModelMetadata,
    model_dir: str | os.PathLike,
    threads: int | None = None,
    *,
    batch_size: int = 8,
    rounds: int = 3,
    measure: Callable[[Sequence[Candidate]], dict[str, float]] | None = None,
    cpu: CpuInfo | None = None,
    versions: dict[str, str] | None = None,
    engines: Sequence[str] | None = None,
    cache: str | os.PathLike | None = None,
    use_cache: bool = True,
) -> EngineChoice:
    """The artifact and engine to run (see the module docstring). ``measure(cands) -> {label: img/s}``
    replaces :func:`measure_candidates`; ``cpu``, ``versions``, ``engines`` and ``cache`` (a folder) replace
    what this machine reports (tests)."""
    model_dir = Path(model_dir)
    cpu = cpu or cpu_info()
    versions = package_versions(CHOICE_DISTRIBUTIONS) if versions is None else dict(versions)
    engines = list(installed_engines()) if engines is None else list(engines)
    cands = candidates(metadata, model_dir, engines)
    if not cands:
        return EngineChoice(None, None, "no artifact in tki.json records passed parity on an installed engine; "
                            "the export's default precision runs", "default", cpu=cpu.model)
    if len(cands) == 1:
        c = cands[0]
        return EngineChoice(c.precision, c.engine, f"the only artifact that passed parity on an installed engine "
                            f"({c.label})", "default", threads=threads, cpu=cpu.model)
    folder = Path(cache) if cache is not None else cache_dir()
    path = folder / CACHE_FILE
    entry = _entry_key(cands, threads, batch_size)
    store: EngineChoiceCache | None = None
    if use_cache and path.is_file():
        try:
            store = EngineChoiceCache.load(path)
        except (ContractError, OSError) as e:
            log.warning("engine choice: ignoring %s (%s)", path, e)
        if store is not None and not store.matches(cpu, versions):
            log.info("engine choice: %s was measured on another CPU or package versions; measuring again", path)
            store = None
        if store is not None and entry in store.choices:
            got = EngineChoice.from_dict(store.choices[entry])
            if any(c.precision == got.precision and c.engine == got.engine for c in cands):
                got.source = "cache"
                return got
    labels = {c.label: c for c in cands}
    speeds = (measure or (lambda cs: measure_candidates(cs, model_dir, metadata, threads, batch_size, rounds)))(cands)
    speeds = {k: float(v) for k, v in speeds.items() if k in labels and np.isfinite(v) and v > 0}
    if not speeds:
        return EngineChoice(None, None, "no candidate could run here; the export's default precision runs",
                            "default", cpu=cpu.model)
    best = max(speeds, key=lambda k: speeds[k])
    order = sorted(speeds, key=lambda k: -speeds[k])
    others = ", ".join(f"{k} {speeds[k]:.1f}" for k in order[1:])
    t_txt = f"{threads} threads" if threads else "all cores"
    reason = (f"fastest of {len(speeds)} candidates that passed parity, measured on {cpu.model} "
              f"({t_txt}, batch {batch_size}): {best} {speeds[best]:.1f} img/s" + (f" vs {others}" if others else ""))
    choice = EngineChoice(labels[best].precision, labels[best].engine, reason, "measured", speeds, threads,
                          batch_size, cpu.model,
                          _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    if use_cache:
        store = store or EngineChoiceCache(cpu_key=cpu.key, cpu=cpu.model, versions=versions)
        store.choices[entry] = {**choice.to_dict(), "source": "cache"}
        try:
            folder.mkdir(parents=True, exist_ok=True)
            store.save(path)
        except OSError as e:
            log.warning("engine choice: cannot write %s (%s); the next Embedder measures again", path, e)
    return choice
