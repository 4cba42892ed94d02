"""What this CPU is and what it can do at most: vendor, model, the ISA features that decide inference speed,
cores, frequency, and an estimated peak for fp32 and int8 arithmetic.

Read from ``/proc/cpuinfo`` and ``/sys/devices/system/cpu`` (Linux); elsewhere the fields that cannot be read
are ``None`` / empty. Recorded in every benchmark result and used as the cache key of the engine choice
(:mod:`tki_sdk.runtime.engine.engine_choice`).

Peak estimate (:func:`peak_estimate`), per core and cycle, assuming two vector FMA / multiply pipes per core
(true of Intel Skylake-SP and later Xeon Gold/Platinum, AMD Zen 2-5; some Xeon Silver/Bronze parts have one
512-bit FMA unit, which halves the AVX-512 figures):

==========================  ============================  ===============================================
ISA                         fp32 FLOP/cycle               int8 ops/cycle (1 MAC = 2 ops)
==========================  ============================  ===============================================
AMX-INT8                    (as AVX-512)                  2048 (TMUL: 1024 int8 MAC/cycle)
AVX-512 VNNI                2 x 16 lanes x 2 = 64         2 x 64 MAC (``VPDPBUSD``) x 2 = 256
AVX-VNNI (256-bit)          2 x 8 x 2 = 32                2 x 32 MAC x 2 = 128
AVX-512BW, no VNNI          64                            2 x 64 MAC / 2 instructions x 2 = 128
AVX2, no VNNI               2 x 8 x 2 = 32                2 x 32 MAC / 2 instructions x 2 = 64
AVX (no FMA)                8 mul + 8 add = 16            32
SSE                         8                             32
==========================  ============================  ===============================================

Without VNNI an int8 dot product takes two instructions per vector (``VPMADDUBSW`` u8 x s8 -> s16 pairs, then
``VPMADDWD`` -> s32), so int8 peaks at only twice fp32; and ``VPMADDUBSW`` saturates its int16 sums, which is
why int8 weights are kept to 7 bits on such CPUs (``export/quantize.py``). AMD Zen 4 (family 0x19 with
AVX-512) executes 512-bit instructions on 256-bit units: it is counted at AVX2 width with VNNI.

``peak GFLOP/s = usable cores x GHz x FLOP/cycle``; the frequency is the highest the kernel reports
(``cpuinfo_max_freq``), else ``cpu MHz`` of ``/proc/cpuinfo`` (under a hypervisor often the nominal clock;
boost clocks make the real peak higher and the measured fraction lower).
"""
from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["CpuInfo", "cpu_info", "parse_cpuinfo", "peak_estimate", "PeakEstimate", "ISA_FLAGS", "usable_cpus"]

#: The ``/proc/cpuinfo`` flags that decide CPU inference speed, as recorded.
ISA_FLAGS = ("sse4_2", "avx", "fma", "f16c", "avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni",
             "avx512_bf16", "avx512_fp16", "amx_tile", "amx_int8", "amx_bf16")

_PEAK_METHOD = ("usable cores x max frequency x per-core ops/cycle of the widest ISA present, assuming two "
                "vector FMA/multiply pipes per core (tki_sdk/common/cpu.py)")


@dataclass(frozen=True)
class PeakEstimate:
    """Estimated peak of the whole usable CPU: ``fp32_gflops`` (FLOP/s / 1e9) and ``int8_gops`` (int8 ops/s /
    1e9, 1 MAC = 2 ops), with the per-core per-cycle figures, the ISA they assume and how they were derived."""

    fp32_gflops: float | None
    int8_gops: float | None
    fp32_flop_per_cycle: int
    int8_ops_per_cycle: int
    fp32_isa: str
    int8_isa: str
    cores: int
    ghz: float | None
    method: str = _PEAK_METHOD

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CpuInfo:
    """Facts about this CPU (see the module docstring). ``flags`` holds the :data:`ISA_FLAGS` present."""

    vendor: str | None
    model: str
    family: int | None
    model_number: int | None
    flags: tuple[str, ...]
    logical_cpus: int
    usable_cpus: int
    physical_cores: int | None
    mhz: float | None
    mhz_source: str
    hypervisor: bool
    machine: str = field(default_factory=platform.machine)

    @property
    def vnni(self) -> bool:
        """``VPDPBUSD`` available (AVX-512 VNNI or AVX-VNNI): int8 products without int16 saturation."""
        return "avx512_vnni" in self.flags or "avx_vnni" in self.flags

    @property
    def key(self) -> str:
        """What identifies the CPU for cached measurements: vendor, model name and ISA flags."""
        return f"{self.vendor or '?'}|{self.model}|{','.join(self.flags)}"

    def peak(self) -> PeakEstimate:
        return peak_estimate(self)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["flags"] = list(self.flags)
        d["vnni"] = self.vnni
        d["peak"] = self.peak().to_dict()
        return d

    def summary(self) -> str:
        """One line: model, cores, clock, ISA, peaks."""
        p = self.peak()
        ghz = f"{p.ghz:.2f} GHz" if p.ghz else "clock unknown"
        isa = "/".join(f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8") if f in self.flags) or "no AVX2"
        peaks = (f"peak fp32 {p.fp32_gflops:.0f} GFLOP/s, int8 {p.int8_gops:.0f} GOP/s" if p.fp32_gflops
                 else "peak unknown")
        return f"{self.model} ({self.vendor}), {self.usable_cpus} usable cores, {ghz}, {isa}; {peaks}"


def parse_cpuinfo(text: str) -> dict[str, str]:
    """The first processor block of ``/proc/cpuinfo`` text as ``{key: value}``."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if out:
                break
            continue
        k, sep, v = line.partition(":")
        if sep:
            out.setdefault(k.strip(), v.strip())
    return out


def _int(v: str | None, base: int = 10) -> int | None:
    try:
        return int(v, base) if v is not None else None
    except ValueError:
        return None


def _max_mhz(sysfs: Path) -> float | None:
    try:
        return int((sysfs / "cpu0" / "cpufreq" / "cpuinfo_max_freq").read_text().strip()) / 1000.0
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask; ``os.cpu_count()`` where there is none)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def cpu_info(cpuinfo_path: str | os.PathLike = "/proc/cpuinfo",
             sysfs: str | os.PathLike = "/sys/devices/system/cpu") -> CpuInfo:
    """Read this machine's :class:`CpuInfo` (paths overridable for tests)."""
    try:
        text = Path(cpuinfo_path).read_text(errors="replace")
    except OSError:
        text = ""
    block = parse_cpuinfo(text)
    flags_all = set(block.get("flags", "").split())
    logical = os.cpu_count() or 1
    usable = usable_cpus()
    sockets = {line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("physical id")}
    cores_per = _int(block.get("cpu cores"))
    physical = cores_per * max(1, len(sockets)) if cores_per else None
    mhz = _max_mhz(Path(sysfs))
    source = "cpuinfo_max_freq"
    if mhz is None:
        try:
            mhz, source = float(block["cpu MHz"]), "/proc/cpuinfo cpu MHz"
        except (KeyError, ValueError):
            mhz, source = None, "unknown"
    return CpuInfo(
        vendor=block.get("vendor_id"),
        model=block.get("model name") or platform.processor() or platform.machine(),
        family=_int(block.get("cpu family")),
        model_number=_int(block.get("model")),
        flags=tuple(f for f in ISA_FLAGS if f in flags_all),
        logical_cpus=logical,
        usable_cpus=usable,
        physical_cores=physical,
        mhz=mhz,
        mhz_source=source,
        hypervisor="hypervisor" in flags_all,
    )


def peak_estimate(cpu: CpuInfo) -> PeakEstimate:
    """Peak fp32 and int8 throughput of ``cpu`` (table and formula in the module docstring)."""
    f = set(cpu.flags)
    amd_zen4 = cpu.vendor == "AuthenticAMD" and cpu.family == 0x19 and "avx512f" in f
    wide512 = "avx512f" in f and not amd_zen4
    if wide512:
        fp32, fp32_isa = 64, "AVX-512 FMA"
    elif "avx2" in f and "fma" in f or amd_zen4:
        fp32, fp32_isa = 32, "AVX2 FMA" + (" (AVX-512 on 256-bit units)" if amd_zen4 else "")
    elif "avx" in f:
        fp32, fp32_isa = 16, "AVX"
    else:
        fp32, fp32_isa = 8, "SSE"
    if "amx_int8" in f:
        int8, int8_isa = 2048, "AMX-INT8"
    elif "avx512_vnni" in f and wide512:
        int8, int8_isa = 256, "AVX-512 VNNI"
    elif "avx512_vnni" in f or "avx_vnni" in f:
        int8, int8_isa = 128, "VNNI at 256-bit"
    elif "avx512bw" in f and wide512:
        int8, int8_isa = 128, "AVX-512BW, no VNNI (VPMADDUBSW + VPMADDWD)"
    elif "avx2" in f:
        int8, int8_isa = 64, "AVX2, no VNNI (VPMADDUBSW + VPMADDWD)"
    else:
        int8, int8_isa = 32, "SSE/AVX integer"
    ghz = cpu.mhz / 1000.0 if cpu.mhz else None
    cores = cpu.usable_cpus
    return PeakEstimate(
        fp32_gflops=cores * ghz * fp32 if ghz else None,
        int8_gops=cores * ghz * int8 if ghz else None,
        fp32_flop_per_cycle=fp32, int8_ops_per_cycle=int8, fp32_isa=fp32_isa, int8_isa=int8_isa,
        cores=cores, ghz=ghz,
    )
