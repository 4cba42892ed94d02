#!/usr/bin/env bash
# Rehearse on the CPU every step of the GPU plan that does not need a GPU (README.md beside this file), so the
# first GPU call tests only the GPU. Writes benchmarks/results/gpu/rehearsal-cpu.log and rehearsal-cpu.json.
#
#   bash benchmarks/gpu/rehearse_cpu.sh [--python .venv/bin/python] [--pacs DIR] [--scratch /tmp/tki-rehearsal]
#
# 1. ignore rules: .gpuwheels/ and .gpudata/ are git-ignored (they travel only when a call carries them);
# 2. pack: the three small wheels downloaded for real (PyPI); onnxruntime-gpu replaced by a stand-in wheel of
#    the same byte size (255,569,273; random, incompressible, installable, imports nothing) so that the split,
#    the checksums and the carry sizes are those of the real run without fetching 244 MiB;
# 3. carry sizes: the working tree that travels (tracked + untracked-not-ignored files) plus each planned call's
#    carried folders, each under the 64 MiB limit;
# 4. receive: each part checked on arrival into a fresh work folder, as on the device; a corrupted part is
#    refused with exit 4;
# 5. install from the local wheels into a fresh venv (no index);
# 6. run_gpu_suite.sh --preset budget --device cpu (install, train, suite) with TKI-Tiny-ViT;
# 7. run_gpu_suite.sh --preset stretch --device cpu (assemble, install, train reused, export, suite with the ORT
#    rows on the CPU provider), into result folders checked against what the device returns (<= 8 files,
#    <= 2 folders down, plain names).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
PY="$REPO/.venv/bin/python"
PACS=${TKI_PACS_DIR:-$REPO/../shared/data/pacs/images}
SCRATCH=/tmp/tki-rehearsal
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --pacs) PACS=$2; shift 2 ;;
    --scratch) SCRATCH=$2; shift 2 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "rehearse_cpu.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
[ -d "$PACS" ] || { echo "rehearse_cpu.sh: PACS images not found at $PACS (pass --pacs DIR)" >&2; exit 2; }
OUTD="$REPO/benchmarks/results/gpu"
mkdir -p "$OUTD"
LOG="$OUTD/rehearsal-cpu.log"
STEPS_JSON="$SCRATCH/steps.jsonl"
rm -rf "$SCRATCH"; mkdir -p "$SCRATCH"
: > "$LOG"; : > "$STEPS_JSON"
say() { echo "[rehearse $(date -u +%H:%M:%S)] $*" | tee -a "$LOG"; }
step() {  # step NAME command...: runs it, logs its output, records its seconds and status
  local name=$1; shift
  local t0=$(date +%s.%N) rc=0
  say "== $name: $*"
  "$@" >>"$LOG" 2>&1 || rc=$?
  local dt; dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  echo "{\"step\": \"$name\", \"seconds\": $dt, \"exit\": $rc}" >> "$STEPS_JSON"
  say "== $name: exit $rc in $dt s"
  return 0
}
say "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cores; load average $(cut -d' ' -f1-3 /proc/loadavg) (a shared machine: times are indicative)"
say "python: $("$PY" -c 'import sys; print(sys.version.split()[0])'), repo $(git rev-parse --short HEAD)"

# 1. ignore rules
ignore_rules() {
  for p in .gpuwheels/p1/x.whl.part-aa .gpuwheels/budget/x.whl .gpudata/pacs/photo/dog/x.jpg; do
    git check-ignore -q "$p" || { echo "$p is NOT ignored"; return 1; }
    echo "ignored: $p ($(git check-ignore -v "$p"))"
  done
}
step ignore-rules ignore_rules

# 2. pack
mkdir -p "$SCRATCH/wheels"
download_small() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$SCRATCH/wheels" open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
  ls -l "$SCRATCH/wheels"
}
step download-small-wheels download_small
standin() {
  "$PY" - "$SCRATCH/wheels" <<'PYEOF'
import hashlib, os, sys, zipfile, base64
from pathlib import Path
TARGET = 255_569_273  # bytes of onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl (PyPI)
name = "onnxruntime_gpu-1.31.1-cp312-cp312-manylinux_2_28_x86_64.whl"
out = Path(sys.argv[1]) / name
def build(pad):
    files = {
        "tki_ort_gpu_standin/__init__.py": b'"""Stand-in for the onnxruntime-gpu wheel in the CPU rehearsal (same size)."""\n',
        "tki_ort_gpu_standin/blob.bin": os.urandom(pad),
        "onnxruntime_gpu-1.31.1.dist-info/METADATA": b"Metadata-Version: 2.1\nName: onnxruntime-gpu\nVersion: 1.31.1\n",
        "onnxruntime_gpu-1.31.1.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tki-rehearsal\nRoot-Is-Purelib: false\nTag: cp312-cp312-manylinux_2_28_x86_64\n",
    }
    rec = []
    for k, v in files.items():
        d = base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b"=").decode()
        rec.append(f"{k},sha256={d},{len(v)}")
    rec.append("onnxruntime_gpu-1.31.1.dist-info/RECORD,,")
    files["onnxruntime_gpu-1.31.1.dist-info/RECORD"] = ("\n".join(rec) + "\n").encode()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        for k, v in files.items():
            z.writestr(k, v)
    return out.stat().st_size
size = build(TARGET - 2000)
size = build(TARGET - 2000 + (TARGET - size))
print(f"stand-in {out.name}: {size} bytes (the real wheel: {TARGET})")
assert size == TARGET, size
PYEOF
}
step make-standin-wheel standin
pack() { PYTHON="$PY" bash benchmarks/gpu/pack_wheels.sh "$@"; }
step pack-budget pack --budget --from "$SCRATCH/wheels" --pacs "$PACS" --pacs-count 64
step pack-stretch pack --stretch --part-mb 50 --from "$SCRATCH/wheels"
untracked_clean() {
  local s; s=$(git status --porcelain --untracked-files=all | grep -E '\.gpuwheels|\.gpudata' || true)
  [ -z "$s" ] || { echo "git sees carried files: $s"; return 1; }
  echo "git status shows none of .gpuwheels/ .gpudata/"
}
step packed-folders-stay-ignored untracked_clean

# 3. carry sizes of every planned call
carry_sizes() {
  "$PY" - "$SCRATCH/carry.json" <<'PYEOF'
import json, os, subprocess, sys
from pathlib import Path
LIMIT = 64 * 2**20
files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True).stdout
tree = sum(os.path.getsize(f) for f in files.decode().split("\0") if f and os.path.isfile(f))
def size(p):
    p = Path(p)
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else p.stat().st_size
parts = sorted((p for p in Path(".gpuwheels").glob("p[0-9]*")), key=lambda p: int(p.name[1:]))
last = parts[-1].as_posix()
plans = {"budget": [("budget: install, train, suite", [".gpuwheels/budget", ".gpudata"])]}
plans["stretch"] = [(f"receive {p.name}", [p.as_posix()]) for p in parts[:-1]]
plans["stretch"].append(("last call: assemble, install, train, export, suite", [last, ".gpudata"]))
plans["budget+stretch"] = [("budget + receive p1", [".gpuwheels/budget", ".gpudata", parts[0].as_posix()])]
plans["budget+stretch"] += [(f"receive {p.name}", [p.as_posix()]) for p in parts[1:-1]]
plans["budget+stretch"].append(("last call: assemble, install, export, suite", [last, ".gpudata"]))
out = {"limit_bytes": LIMIT, "tree_bytes": tree, "plans": {}}
ok = True
for plan, calls in plans.items():
    rows = []
    for what, carry in calls:
        extra = {c: size(c) for c in carry}
        total = tree + sum(extra.values())
        ok &= total < LIMIT
        rows.append({"call": what, "carry": carry, "carry_bytes": extra, "total_bytes": total,
                     "total_mib": round(total / 2**20, 2), "under_limit": total < LIMIT})
        print(f"{plan:15s} {what:52s} {total / 2**20:6.2f} MiB {'ok' if total < LIMIT else 'OVER 64 MiB'}  carry={carry}")
    out["plans"][plan] = rows
json.dump(out, open(sys.argv[1], "w"), indent=2)
sys.exit(0 if ok else 1)
PYEOF
}
step carry-sizes carry_sizes

# 4. receive, as on the device: one part per call into a fresh work folder; a corrupted part refused
DEV="$SCRATCH/device-work"
receive_all() {
  for p in $(ls -d .gpuwheels/p[0-9]* | sort -t p -k2 -n); do
    bash benchmarks/gpu/run_gpu_suite.sh --receive "$p" --work "$DEV"
  done
}
step receive-parts receive_all
corrupt() {
  rm -rf "$SCRATCH/bad" && cp -r .gpuwheels/p2 "$SCRATCH/bad"
  f=$(ls "$SCRATCH/bad"/*.part-* | head -1)
  printf 'X' | dd of="$f" bs=1 seek=1000 conv=notrunc status=none
  local code=0
  bash benchmarks/gpu/run_gpu_suite.sh --receive "$SCRATCH/bad" --work "$SCRATCH/bad-work" || code=$?
  echo "corrupted part: exit $code (4 expected)"; [ "$code" = 4 ]
}
step corrupted-part-refused corrupt

# 5. fresh venv from the local wheels
fresh_venv() {
  python3 -m venv "$SCRATCH/fresh"
  "$SCRATCH/fresh/bin/python" -m pip install -q --no-index --no-deps "$REPO"/.gpuwheels/budget/*.whl
  "$SCRATCH/fresh/bin/python" -c "
import importlib.metadata as md, ftfy, wcwidth
print({d: md.version(d) for d in ('open_clip_torch', 'ftfy', 'wcwidth')}, ftfy.fix_text('âœ” ok'))"
}
step fresh-venv-install fresh_venv

# 6. + 7. the device's own script, on the CPU
check_out() {  # what the device tool returns from $OUT: <= 8 files, <= 2 folders down, plain names
  "$PY" - "$1" <<'PYEOF'
import re, sys
from pathlib import Path
root = Path(sys.argv[1])
files = [p for p in root.rglob("*") if p.is_file()]
for p in files:
    rel = p.relative_to(root)
    assert len(rel.parts) <= 3, f"{rel}: more than 2 folders down"
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", x) for x in rel.parts), f"{rel}: odd characters"
    assert p.stat().st_size <= 16 * 2**20, f"{rel}: over 16 MiB"
assert 0 < len(files) <= 8, f"{len(files)} files"
print(f"{root}: {len(files)} files back: {', '.join(str(p.relative_to(root)) for p in files)}")
PYEOF
}
export TKI_GPU_PIP_AS_DEVICE=1  # pip installs the wheels for the device's CPython 3.12, checking their tags
step budget-cpu bash benchmarks/gpu/run_gpu_suite.sh --preset budget --device cpu --model TKI-Tiny-ViT \
  --wheels .gpuwheels/budget --images .gpudata/pacs --results "$SCRATCH/OUT-budget" --work "$DEV" --seconds 0.2 --python "$PY"
step budget-out-returns check_out "$SCRATCH/OUT-budget"
LASTP=$(ls -d .gpuwheels/p[0-9]* | sort -t p -k2 -n | tail -1)
step stretch-cpu bash benchmarks/gpu/run_gpu_suite.sh --preset stretch --device cpu --model TKI-Tiny-ViT \
  --wheels "$LASTP" --images .gpudata/pacs --results "$SCRATCH/OUT-stretch" --work "$DEV" --seconds 0.2 --python "$PY"
step stretch-out-returns check_out "$SCRATCH/OUT-stretch"
for f in "$SCRATCH"/OUT-*/gpu/*_run.log; do say "--- $(basename "$f")"; cat "$f" >> "$LOG"; done

"$PY" - "$STEPS_JSON" "$SCRATCH/carry.json" "$OUTD/rehearsal-cpu.json" "$SCRATCH" <<'PYEOF'
import json, os, platform, sys
from pathlib import Path
steps = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
carry = json.load(open(sys.argv[2]))
res = {}
for name in ("OUT-budget", "OUT-stretch"):
    for p in sorted((Path(sys.argv[4]) / name / "gpu").glob("*.json")):
        if p.name.endswith("export_parity.json"):
            continue
        r = json.load(open(p))["results"]
        res[name] = {"rows": [{k: t[k] for k in ("backend", "provider", "batch_size", "images_per_s")} for t in r["throughput"]],
                     "parity_pass": {k: v["pass"] for k, v in r["parity"].items()}, "skipped": r["skipped"]}
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.processor())
doc = {"what": "CPU rehearsal of the GPU plan (benchmarks/gpu/README.md); measured on a shared machine, times indicative",
       "cpu": cpu, "cores": os.cpu_count(), "load_average_at_end": open("/proc/loadavg").read().split()[:3],
       "steps": steps, "carry": carry, "results_on_cpu": res,
       "all_ok": all(s["exit"] == 0 for s in steps)}
json.dump(doc, open(sys.argv[3], "w"), indent=2)
print(f"all steps ok: {doc['all_ok']}")
PYEOF
say "written: $LOG, $OUTD/rehearsal-cpu.json"
grep -q '"exit": [1-9]' "$STEPS_JSON" && { say "some steps failed (see above)"; exit 1; }
exit 0
