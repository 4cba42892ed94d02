#!/usr/bin/env bash
# Prepare what the GPU machine is sent (it has no package registry), on a machine with PyPI access.
#
#   bash benchmarks/gpu/pack_wheels.sh [--budget | --stretch] [--part-mb 50] [--pacs DIR] [--pacs-count 64]
#                                      [--from DIR] [--out .gpuwheels] [--data .gpudata]
#
# --budget (default): the three small wheels the torch-only budget preset needs (open_clip_torch, ftfy,
#   wcwidth) -> <out>/budget/ with SHA256SUMS.
# --stretch: those plus onnxruntime-gpu, split into parts of --part-mb MiB: <out>/p1 ... <out>/pK, one folder
#   per device call. Every folder holds PARTSUMS (the SHA-256 of each file in it, checked on arrival by
#   run_gpu_suite.sh --receive); the last also holds the small wheels and SHA256SUMS of the whole wheels
#   (checked after the parts are joined).
# --pacs DIR: a PACS sample of --pacs-count images, <domain>/<class>/<file> kept, -> <data>/pacs.
# --from DIR: take the wheels from DIR instead of downloading them (the CPU rehearsal uses a stand-in there).
# Both folders are git-ignored: they travel to the device only when a call names them in `carry`.
# See README.md beside this file.
set -euo pipefail

OUT=.gpuwheels
DATA=.gpudata
MODE=budget
PART_MB=50
PACS=${TKI_PACS_DIR:-}
PACS_COUNT=64
FROM=""
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --budget) MODE=budget; shift ;;
    --stretch) MODE=stretch; shift ;;
    --part-mb) PART_MB=$2; shift 2 ;;
    --pacs) PACS=$2; shift 2 ;;
    --pacs-count) PACS_COUNT=$2; shift 2 ;;
    --from) FROM=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --data) DATA=$2; shift 2 ;;
    -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
    *) echo "pack_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[ "$PART_MB" -ge 1 ] 2>/dev/null || { echo "pack_wheels.sh: --part-mb must be a positive integer" >&2; exit 2; }
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"

# The GPU machine: CPython 3.12, manylinux x86-64; torch 2.11 + CUDA 13 there already.
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
SMALL=(open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)
BIG=(onnxruntime-gpu==1.31.1)
WANT=("${SMALL[@]}")
[ "$MODE" = stretch ] && WANT+=("${BIG[@]}")

SRC=${FROM:-.whl}
if [ -z "$FROM" ]; then
  mkdir -p .whl
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
    -d .whl "${WANT[@]}"
fi
wheel_of() {  # spec -> the wheel file in $SRC
  local name=${1%%==*} ver=${1##*==}
  local f
  f=$(ls "$SRC"/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "pack_wheels.sh: no wheel for $1 in $SRC/" >&2; exit 1; }
  echo "$f"
}

if [ "$MODE" = budget ]; then
  rm -rf "$OUT/budget"
  mkdir -p "$OUT/budget"
  for spec in "${SMALL[@]}"; do cp "$(wheel_of "$spec")" "$OUT/budget/"; done
  (cd "$OUT/budget" && sha256sum -- *.whl > SHA256SUMS)
else
  rm -rf "$OUT"/p[0-9]* "$OUT/stage"
  mkdir -p "$OUT/stage"
  for spec in "${WANT[@]}"; do cp "$(wheel_of "$spec")" "$OUT/stage/"; done
  (cd "$OUT/stage" && sha256sum -- *.whl > SHA256SUMS)
  n=0
  for spec in "${BIG[@]}"; do
    f="$OUT/stage/$(basename "$(wheel_of "$spec")")"
    split -b "${PART_MB}M" -a 2 "$f" "$f.part-"
    rm -f "$f"
    for p in "$f".part-*; do
      n=$((n + 1)); mkdir -p "$OUT/p$n"; mv "$p" "$OUT/p$n/"
    done
  done
  # the small wheels and the whole-wheel checksums ride with the last part
  mv "$OUT"/stage/*.whl "$OUT"/stage/SHA256SUMS "$OUT/p$n/"
  rmdir "$OUT/stage"
  for d in "$OUT"/p*; do (cd "$d" && sha256sum -- $(ls | grep -v '^PARTSUMS$') > PARTSUMS); done
fi

if [ -n "$PACS" ]; then
  [ -d "$PACS" ] || { echo "pack_wheels.sh: --pacs $PACS is not a folder" >&2; exit 2; }
  rm -rf "$DATA/pacs"
  "$PY" - "$PACS" "$DATA/pacs" "$PACS_COUNT" <<'PYEOF'
import shutil, sys
from pathlib import Path
src, dst, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
files = sorted(p for p in src.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png") and p.is_file())
pick = files if n >= len(files) else [files[(i * len(files)) // n] for i in range(n)]
for f in pick:
    t = dst / f.relative_to(src)
    t.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(f, t)
print(f"PACS sample: {len(pick)} files -> {dst}")
PYEOF
fi
for d in "$OUT"/*/; do
  echo "carry folder ${d%/}: $(du -sb "$d" | cut -f1) bytes: $(ls "$d" | tr '\n' ' ')"
done
[ -d "$DATA" ] && echo "carry folder $DATA: $(du -sb "$DATA" | cut -f1) bytes"
exit 0
