"""CPU facts and the peak estimate (tki_sdk.common.cpu), read from /proc/cpuinfo texts of several CPUs and
from this machine."""
from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from tki_sdk.common.cpu import ISA_FLAGS, cpu_info, parse_cpuinfo, peak_estimate

BASE = "fpu vme sse sse2 ssse3 sse4_1 sse4_2 popcnt avx f16c"


def _cpuinfo(tmp: Path, vendor: str, model: str, family: int, flags: str, mhz: float, cores: int) -> Path:
    blocks = []
    for i in range(cores):
        blocks.append(f"processor\t: {i}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: 1\n"
                      f"model name\t: {model}\ncpu MHz\t\t: {mhz}\nphysical id\t: 0\ncpu cores\t: {cores}\n"
                      f"flags\t\t: {BASE} {flags}\n")
    p = tmp / "cpuinfo"
    p.write_text("\n".join(blocks) + "\n")
    return p


# (vendor, model, family, flags, fp32 FLOP/cycle, int8 ops/cycle): two vector pipes per core;
# fp32 = pipes x lanes x 2 (FMA); int8 = pipes x int8 MACs per instruction x 2 / instructions per product
CPUS = [
    ("AuthenticAMD", "AMD EPYC 7B13 (Zen 3)", 25, "fma avx2", 2 * 8 * 2, 2 * 32 * 2 // 2),
    ("GenuineIntel", "Xeon Ice Lake", 6, "fma avx2 avx512f avx512bw avx512_vnni", 2 * 16 * 2, 2 * 64 * 2),
    ("GenuineIntel", "Xeon Skylake-SP", 6, "fma avx2 avx512f avx512bw", 2 * 16 * 2, 2 * 64 * 2 // 2),
    ("GenuineIntel", "Xeon Sapphire Rapids", 6, "fma avx2 avx512f avx512bw avx512_vnni amx_tile amx_int8", 64, 2048),
    ("AuthenticAMD", "AMD EPYC 9004 (Zen 4)", 25, "fma avx2 avx512f avx512bw avx512_vnni", 2 * 8 * 2, 2 * 32 * 2),
    ("GenuineIntel", "Core Alder Lake", 6, "fma avx2 avx_vnni", 2 * 8 * 2, 2 * 32 * 2),
]


@pytest.mark.parametrize("vendor,model,family,flags,fp32,int8", CPUS, ids=[c[1] for c in CPUS])
def test_peak_per_isa(tmp_path, vendor, model, family, flags, fp32, int8):
    info = cpu_info(_cpuinfo(tmp_path, vendor, model, family, flags, 2500.0, 4), sysfs=tmp_path / "nosysfs")
    assert info.vendor == vendor and info.model == model and info.family == family
    assert info.mhz == 2500.0 and info.mhz_source == "/proc/cpuinfo cpu MHz"
    assert set(info.flags) == {f for f in (BASE + " " + flags).split() if f in ISA_FLAGS}
    assert info.vnni == ("vnni" in flags)
    p = peak_estimate(info)
    assert (p.fp32_flop_per_cycle, p.int8_ops_per_cycle) == (fp32, int8)
    cores = info.usable_cpus
    assert p.fp32_gflops == pytest.approx(cores * 2.5 * fp32) and p.int8_gops == pytest.approx(cores * 2.5 * int8)
    assert "cores x max frequency" in p.method and info.to_dict()["peak"]["int8_isa"] == p.int8_isa


def test_max_frequency_from_sysfs_wins(tmp_path):
    (tmp_path / "cpu0" / "cpufreq").mkdir(parents=True)
    (tmp_path / "cpu0" / "cpufreq" / "cpuinfo_max_freq").write_text("3500000\n")
    info = cpu_info(_cpuinfo(tmp_path, "GenuineIntel", "X", 6, "fma avx2", 2000.0, 2), sysfs=tmp_path)
    assert info.mhz == 3500.0 and info.mhz_source == "cpuinfo_max_freq"


def test_unreadable_cpuinfo_gives_unknown_clock(tmp_path):
    info = cpu_info(tmp_path / "missing", sysfs=tmp_path)
    assert info.mhz is None and info.peak().fp32_gflops is None and info.flags == ()


def test_key_changes_with_model_or_flags(tmp_path):
    a = cpu_info(_cpuinfo(tmp_path, "GenuineIntel", "A", 6, "fma avx2", 2000.0, 2), sysfs=tmp_path)
    b = cpu_info(_cpuinfo(tmp_path, "GenuineIntel", "B", 6, "fma avx2", 2000.0, 2), sysfs=tmp_path)
    c = cpu_info(_cpuinfo(tmp_path, "GenuineIntel", "A", 6, "fma avx2 avx512f", 2000.0, 2), sysfs=tmp_path)
    assert len({a.key, b.key, c.key}) == 3


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="needs Linux /proc/cpuinfo")
def test_this_machine_matches_proc_cpuinfo():
    text = Path("/proc/cpuinfo").read_text()
    first = parse_cpuinfo(text)
    info = cpu_info()
    assert info.model == re.search(r"^model name\s*:\s*(.*)$", text, re.M).group(1).strip()
    assert info.vendor == first.get("vendor_id")
    flags = set(re.search(r"^flags\s*:\s*(.*)$", text, re.M).group(1).split())
    assert set(info.flags) == flags & set(ISA_FLAGS)
    assert info.usable_cpus == len(os.sched_getaffinity(0)) and info.logical_cpus == os.cpu_count()
    assert info.peak().fp32_gflops is None or info.peak().fp32_gflops > 0
