#!/usr/bin/env bash
# GPU parity and throughput of tki-sdk on a machine with no network (see README.md beside this file).
#
#   bash benchmarks/gpu/run_gpu_suite.sh --wheels DIR --images DIR [--results DIR] [--model ViT-B-32]
#        [--work /tmp/tki-gpu] [--steps install,test,train,export,suite] [--quick] [--name NAME]
#        [--compile-mode reduce-overhead] [--train-device cuda] [--python python3]
#
# install: joins split wheels in --wheels (NAME.whl.part-aa, -ab, ... -> NAME.whl), checks SHA256SUMS, installs
#          them with `pip install --no-index --no-deps --target <work>/site`, installs this project editable
#          (--no-deps --no-build-isolation), and puts NVIDIA's pip-installed CUDA libraries on LD_LIBRARY_PATH;
# test:    pytest -m gpu on tests/test_gpu_*.py;
# train:   `tki train` on --model (random init: no hub) for a few steps on the GPU;
# export:  `tki-export` fp32 + fp16 (+ --tensorrt when the tensorrt package imports), validated;
# suite:   `tki-bench gpu` (python -m tki_sdk.cli.bench gpu) -> <results>/gpu/<name>.json + PNGs.
# Steps can run in separate calls on the same machine: state lives in --work (env.sh there re-exports paths).
# Logs, the export's parity.json / tki.json and the pytest log are copied to <results>/gpu/ as well.
set -euo pipefail

WHEELS=""
IMAGES=""
RESULTS=""
MODEL="ViT-B-32"
WORK="/tmp/tki-gpu"
STEPS="install,test,train,export,suite"
QUICK=""
NAME=""
COMPILE_MODE="reduce-overhead"
TRAIN_DEVICE="cuda"
PY=${PYTHON:-python3}
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    --name) NAME=$2; shift 2 ;;
    --compile-mode) COMPILE_MODE=$2; shift 2 ;;
    --train-device) TRAIN_DEVICE=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "run_gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
abs() { [ -z "$1" ] && return 0; case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
WHEELS=$(abs "$WHEELS"); IMAGES=$(abs "$IMAGES"); WORK=$(abs "$WORK")
RESULTS=${RESULTS:-$REPO/benchmarks/results}
NAME=${NAME:-$(echo "$MODEL" | tr 'A-Z' 'a-z')}
mkdir -p "$WORK" "$RESULTS/gpu"
RESULTS=$(cd "$RESULTS" && pwd)
LOG="$RESULTS/gpu/${NAME}_run.log"
SITE="$WORK/site"
has() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
log() { echo "[run_gpu_suite $(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
: > "$LOG"

# ---------------------------------------------------------------------------------------------- install
if has install; then
  [ -n "$WHEELS" ] || { echo "run_gpu_suite.sh: --wheels DIR is needed for the install step" >&2; exit 2; }
  log "joining and checking wheels in $WHEELS"
  (
    cd "$WHEELS"
    for first in *.whl.part-aa; do
      [ -e "$first" ] || continue
      whl=${first%.part-aa}
      cat "$whl".part-* > "$whl.tmp" && mv "$whl.tmp" "$whl" && rm -f "$whl".part-*
    done
    if [ -f SHA256SUMS ]; then
      sha256sum -c --quiet SHA256SUMS || { echo "wheels do not match SHA256SUMS: a wheel or split part is missing or broken (copy them again, see README.md)" >&2; exit 1; }
    fi
  )
  log "pip install --no-index --no-deps --target $SITE"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl 2>&1 | tee -a "$LOG"
  log "installing this project (editable, no deps)"
  if ! "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" >>"$LOG" 2>&1; then
    log "editable install failed; installing a copy into $SITE"
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation --target "$SITE" "$REPO" 2>&1 | tee -a "$LOG"
  fi
  NV=$("$PY" - <<'EOF'
import glob, os, site
roots = [*site.getsitepackages(), site.getusersitepackages()]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True)})))
EOF
)
  cat > "$WORK/env.sh" <<EOF
export PYTHONPATH="$SITE\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$NV\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export TKI_TRT_CACHE="$WORK/trt-cache"
EOF
fi
[ -f "$WORK/env.sh" ] || { echo "run_gpu_suite.sh: run the install step first ($WORK/env.sh is missing)" >&2; exit 2; }
# shellcheck disable=SC1091
. "$WORK/env.sh"
cd "$WORK"  # never the repository root: a copy in $SITE must not be shadowed by the source folders

log "environment"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" - <<'EOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
import onnxruntime as ort
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
for d in ("onnxruntime-gpu", "open_clip_torch", "onnx", "onnxscript", "onnx-ir", "tensorrt", "tki-sdk"):
    try:
        print(d, md.version(d))
    except md.PackageNotFoundError:
        print(d, "-")
EOF
} 2>&1 | tee -a "$LOG"
if ! "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)"; then
  log "onnxruntime here has no CUDAExecutionProvider: onnxruntime-gpu did not install (see README.md)"
  if has suite; then exit 1; fi
fi

# ---------------------------------------------------------------------------------------------- test
if has test; then
  log "pytest -m gpu"
  set +e
  TKI_PACS_DIR="${IMAGES:-${TKI_PACS_DIR:-}}" \
    "$PY" -m pytest -q -m gpu -p no:cacheprovider --rootdir "$REPO" "$REPO"/tests/test_gpu_*.py 2>&1 \
    | tee "$RESULTS/gpu/${NAME}_pytest_gpu.log"
  rc=${PIPESTATUS[0]}
  set -e
  log "pytest -m gpu exit status $rc"
fi

# ---------------------------------------------------------------------------------------------- train
CKPT="$WORK/ckpt-$NAME"
EXPORT="$WORK/export-$NAME"
if has train; then
  log "tki train --model $MODEL (random init) on $TRAIN_DEVICE"
  "$PY" -m tki_sdk.cli.main train --model "$MODEL" --classes dog,elephant,giraffe,guitar,horse,house,person \
    --out "$CKPT" --prompts 8 --steps-expand 20 --steps-aggregate 50 --device "$TRAIN_DEVICE" --no-progress 2>&1 | tee -a "$LOG"
fi

# ---------------------------------------------------------------------------------------------- export
if has export; then
  TRT=""
  if "$PY" -c "import tensorrt" >/dev/null 2>&1; then TRT="--tensorrt"; fi
  log "tki-export fp32,fp16 ${TRT:-(no tensorrt package: no model.plan)}"
  CAL=()
  [ -n "$IMAGES" ] && CAL=(--calib-images "$IMAGES")
  "$PY" -m tki_sdk.cli.export --checkpoint "$CKPT" --out "$EXPORT" --precision fp32,fp16 $TRT "${CAL[@]}" \
    --max-batch 256 --threads "$(nproc)" --no-timing --no-progress 2>&1 | tee -a "$LOG"
  cp "$EXPORT/parity.json" "$RESULTS/gpu/${NAME}_export_parity.json" 2>/dev/null || true
  cp "$EXPORT/tki.json" "$RESULTS/gpu/${NAME}_export_tki.json" 2>/dev/null || true
fi

# ---------------------------------------------------------------------------------------------- suite
if has suite; then
  log "tki-bench gpu $QUICK"
  DS=()
  [ -n "$IMAGES" ] && DS=(--dataset-dir "$IMAGES")
  "$PY" -m tki_sdk.cli.bench gpu --model-dir "$EXPORT" --checkpoint "$CKPT" "${DS[@]}" \
    --out-dir "$RESULTS" --name "$NAME" --compile-mode "$COMPILE_MODE" $QUICK 2>&1 | tee -a "$LOG"
fi
log "done; results in $RESULTS/gpu"
