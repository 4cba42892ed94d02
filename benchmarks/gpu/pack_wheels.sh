#!/usr/bin/env bash
# Download the wheels the GPU suite needs (on a machine with PyPI access) into one folder, with their
# SHA256SUMS and an optional PACS sample, to copy to a GPU machine that has no network.
#
#   bash benchmarks/gpu/pack_wheels.sh [--out .gpuwheels] [--pacs DIR] [--pacs-count 400] [--all] [--part-mb N]
#
# Writes the wheels and SHA256SUMS to <out>/ and a PACS sample keeping <domain>/<class>/<file> to
# <out>/../.gpudata/pacs. --all adds the wheels only the gallery / search code needs (usearch, numkong,
# geoopt). --part-mb N (optional, for transfers limited in size): split wheels larger than N MiB with
# `split` and spread everything over <out>/p1 ... <out>/pK of about N MiB each; run_gpu_suite.sh joins the
# parts again. See README.md beside this file.
set -euo pipefail

OUT=.gpuwheels
PART_MB=0
PACS=${TKI_PACS_DIR:-}
PACS_COUNT=400
ALL=0
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --out) OUT=$2; shift 2 ;;
    --part-mb) PART_MB=$2; shift 2 ;;
    --pacs) PACS=$2; shift 2 ;;
    --pacs-count) PACS_COUNT=$2; shift 2 ;;
    --all) ALL=1; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "pack_wheels.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"

# Target: CPython 3.12, manylinux x86-64 (the GPU machine's interpreter).
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
NEEDED=(onnxruntime-gpu==1.31.1 open-clip-torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4)
OPTIONAL=(usearch==2.26.6 numkong==7.8.6 geoopt==0.5.1)
WANT=("${NEEDED[@]}")
[ "$ALL" = 1 ] && WANT+=("${OPTIONAL[@]}")
mkdir -p .whl
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" \
  -d .whl "${WANT[@]}"

rm -rf "$OUT"
mkdir -p "$OUT/stage"
for spec in "${WANT[@]}"; do
  name=${spec%%==*}; ver=${spec##*==}
  f=$(ls .whl/"${name//-/_}"-"$ver"-*.whl 2>/dev/null | head -1)
  [ -n "$f" ] || { echo "pack_wheels.sh: no wheel for $spec in .whl/" >&2; exit 1; }
  cp "$f" "$OUT/stage/"
done
(cd "$OUT/stage" && sha256sum *.whl > SHA256SUMS)

if [ "$PART_MB" -le 0 ]; then
  mv "$OUT"/stage/* "$OUT/"
  rmdir "$OUT/stage"
else
  # Split every wheel larger than one part; the parts fill p1..p(K-1), the rest goes to pK.
  n=0
  for f in "$OUT"/stage/*.whl; do
    if [ "$(stat -c %s "$f")" -gt $((PART_MB * 1024 * 1024)) ]; then
      split -b "${PART_MB}M" -a 2 "$f" "$f.part-"
      for p in "$f".part-*; do
        n=$((n + 1)); mkdir -p "$OUT/p$n"; mv "$p" "$OUT/p$n/"
      done
      rm -f "$f"
    fi
  done
  n=$((n + 1)); mkdir -p "$OUT/p$n"
  mv "$OUT"/stage/*.whl "$OUT"/stage/SHA256SUMS "$OUT/p$n/" 2>/dev/null || mv "$OUT"/stage/SHA256SUMS "$OUT/p$n/"
  rmdir "$OUT/stage"
  # The last split part is small: the other wheels and the checksums go with it when they fit.
  if [ "$n" -gt 1 ]; then
    last=$((n - 1))
    total=$(du -cb "$OUT/p$last" "$OUT/p$n" | tail -1 | cut -f1)
    if [ "$total" -le $((PART_MB * 1024 * 1024 + 8 * 1024 * 1024)) ]; then
      mv "$OUT/p$n"/* "$OUT/p$last/"; rmdir "$OUT/p$n"; n=$last
    fi
  fi
fi

if [ -n "$PACS" ] && [ -d "$PACS" ]; then
  DATA="$(dirname "$OUT")/.gpudata/pacs"
  rm -rf "$DATA"
  "$PY" - "$PACS" "$DATA" "$PACS_COUNT" <<'EOF'
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
EOF
fi
if [ "$PART_MB" -le 0 ]; then
  echo "wheels: $OUT ($(du -sh "$OUT" | cut -f1)): $(ls "$OUT" | tr '\n' ' ')"
else
  echo "parts (copy all of them into one folder on the GPU machine):"
  for d in "$OUT"/p*; do echo "  $d $(du -sh "$d" | cut -f1): $(ls "$d" | tr '\n' ' ')"; done
fi
