#!/usr/bin/env bash
# GPU parity and throughput of tki-sdk on a machine with no package registry (see README.md beside this file).
#
#   bash benchmarks/gpu/run_gpu_suite.sh --receive PARTDIR [--work /tmp/tki-gpu]
#   bash benchmarks/gpu/run_gpu_suite.sh --preset budget|stretch --results DIR [--wheels DIR] [--images DIR]
#        [--model ViT-B-32] [--work /tmp/tki-gpu] [--device cuda|cpu] [--steps LIST] [--name NAME]
#        [--seconds S] [--python python3]
#
# --receive: one wheel part per call: checks the SHA-256 of every file in PARTDIR against its PARTSUMS and keeps
#   them in <work>/parts for the last call (exit 4 when a file does not match: send that part again).
# --preset budget (one call): install the small wheels of --wheels, train a checkpoint on the GPU (a few steps,
#   random init), `tki-bench gpu --preset budget` (torch fp32 / fp16 / fp16 + CUDA graph at batch 1, 32, 256;
#   parity; JSON + PNG). Steps: install,train,suite.
# --preset stretch (the last call after the parts): join the parts of <work>/parts and --wheels, check the
#   whole wheels against SHA256SUMS, install, train (skipped when <work> already has the checkpoint), export
#   fp32 + fp16, `tki-bench gpu` on the ORT CUDA fp32 / fp16 rows. Steps: assemble,install,train,export,suite.
# --results DIR: where every result and log goes (on the GPU machine: $OUT, the only folder that comes back);
#   at most 6 files: <name>.json, <name>_throughput.png, <name>_latency.png, <name>_run.log, and for stretch
#   <name>_export_parity.json.
# --device cpu: the same steps on the CPU (the rehearsal, with --model TKI-Tiny-ViT); nothing is faked as GPU.
# Exit status: 0 ok, 1 a step failed, 2 bad usage, 4 a wheel or part failed its checksum.
set -euo pipefail

RECEIVE=""
PRESET=""
WHEELS=""
IMAGES=""
RESULTS=""
MODEL="ViT-B-32"
WORK="/tmp/tki-gpu"
DEVICE="cuda"
STEPS=""
NAME=""
SECONDS_PER=""
PY=${PYTHON:-python3}
usage() { echo "run_gpu_suite.sh: $*" >&2; exit 2; }
while [ $# -gt 0 ]; do
  case "$1" in
    --receive) RECEIVE=$2; shift 2 ;;
    --preset) PRESET=$2; shift 2 ;;
    --wheels) WHEELS=$2; shift 2 ;;
    --images) IMAGES=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --device) DEVICE=$2; shift 2 ;;
    --steps) STEPS=$2; shift 2 ;;
    --name) NAME=$2; shift 2 ;;
    --seconds) SECONDS_PER=$2; shift 2 ;;
    --python) PY=$2; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) usage "unknown option $1 (see --help)" ;;
  esac
done
REPO=$(cd "$(dirname "$0")/../.." && pwd)
abs() { [ -z "$1" ] && return 0; case "$1" in /*) echo "$1" ;; *) echo "$PWD/$1" ;; esac; }
WHEELS=$(abs "$WHEELS"); IMAGES=$(abs "$IMAGES"); WORK=$(abs "$WORK"); RECEIVE=$(abs "$RECEIVE")
mkdir -p "$WORK"
now() { date +%s; }
T0=$(now)

# ---------------------------------------------------------------------------------------------- receive
if [ -n "$RECEIVE" ]; then
  [ -f "$RECEIVE/PARTSUMS" ] || usage "--receive $RECEIVE has no PARTSUMS (make the parts with pack_wheels.sh --stretch)"
  if ! (cd "$RECEIVE" && sha256sum -c --quiet PARTSUMS); then
    echo "run_gpu_suite.sh: $(basename "$RECEIVE") does not match its PARTSUMS: send that part again" >&2
    exit 4
  fi
  mkdir -p "$WORK/parts"
  cp -f "$RECEIVE"/* "$WORK/parts/"
  rm -f "$WORK/parts/PARTSUMS"
  echo "received $(basename "$RECEIVE"): $(du -cb "$RECEIVE" | tail -1 | cut -f1) bytes checked; $WORK/parts holds $(ls "$WORK/parts" | wc -l) file(s), $(du -sb "$WORK/parts" | cut -f1) bytes"
  exit 0
fi

case "$PRESET" in
  budget) STEPS=${STEPS:-install,train,suite} ;;
  stretch) STEPS=${STEPS:-assemble,install,train,export,suite} ;;
  *) usage "--preset budget or --preset stretch (or --receive PARTDIR) is needed" ;;
esac
case "$DEVICE" in cuda|cpu) ;; *) usage "--device must be cuda or cpu" ;; esac
[ -n "$RESULTS" ] || usage "--results DIR is needed (on the GPU machine: --results \$OUT, the only folder that comes back)"
NAME=${NAME:-$PRESET-$(echo "$MODEL" | tr 'A-Z' 'a-z')}
[ "$DEVICE" = cpu ] && NAME="$NAME-cpu"
mkdir -p "$RESULTS/gpu"
RESULTS=$(cd "$RESULTS" && pwd)
LOG="$RESULTS/gpu/${NAME}_run.log"
SITE="$WORK/site"
CKPT="$WORK/ckpt-$(echo "$MODEL" | tr 'A-Z' 'a-z')"
EXPORT="$WORK/export-$(echo "$MODEL" | tr 'A-Z' 'a-z')"
has() { case ",$STEPS," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
log() { echo "[run_gpu_suite +$(( $(now) - T0 ))s] $*" | tee -a "$LOG" >&2; }
: > "$LOG"
log "preset $PRESET, device $DEVICE, model $MODEL, steps $STEPS, results $RESULTS/gpu"

# ---------------------------------------------------------------------------------------------- assemble
if has assemble; then
  [ -n "$WHEELS" ] && [ -f "$WHEELS/SHA256SUMS" ] || usage "--wheels DIR with SHA256SUMS (the last part) is needed to assemble"
  mkdir -p "$WORK/wheels"
  cp -f "$WHEELS"/*.whl "$WHEELS/SHA256SUMS" "$WORK/wheels/" 2>/dev/null || true
  cp -f "$WHEELS"/*.whl.part-* "$WORK/parts/" 2>/dev/null || true
  for first in "$WORK"/parts/*.whl.part-aa; do
    [ -e "$first" ] || continue
    whl=$(basename "${first%.part-aa}")
    cat "$WORK/parts/$whl".part-* > "$WORK/wheels/$whl"
  done
  if ! (cd "$WORK/wheels" && sha256sum -c --quiet SHA256SUMS) >>"$LOG" 2>&1; then
    log "the joined wheels do not match SHA256SUMS: a part is missing or broken ($(ls "$WORK/parts" | tr '\n' ' ')); send the parts again"
    exit 4
  fi
  log "assembled and checked: $(ls "$WORK/wheels" | grep -c '\.whl$') wheels"
  WHEELS="$WORK/wheels"
fi

# ---------------------------------------------------------------------------------------------- install
if has install; then
  [ -n "$WHEELS" ] || usage "--wheels DIR is needed for the install step"
  if [ -f "$WHEELS/SHA256SUMS" ] && ! (cd "$WHEELS" && sha256sum -c --quiet SHA256SUMS) >>"$LOG" 2>&1; then
    log "wheels in $WHEELS do not match SHA256SUMS"; exit 4
  fi
  log "pip install --no-index --no-deps --target $SITE: $(cd "$WHEELS" && ls *.whl | tr '\n' ' ')"
  PLATFORM=()
  if [ "${TKI_GPU_PIP_AS_DEVICE:-0}" = 1 ]; then  # the CPU rehearsal: install for the device's interpreter
    PLATFORM=(--python-version 3.12 --implementation cp --only-binary=:all: --platform manylinux_2_28_x86_64
              --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
  fi
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "${PLATFORM[@]}" \
    --target "$SITE" "$WHEELS"/*.whl >>"$LOG" 2>&1 || { log "pip install failed (see the log)"; exit 1; }
  NV=$("$PY" - <<'PYEOF'
import glob, os, site
roots = [*site.getsitepackages(), site.getusersitepackages()]
print(":".join(sorted({d for r in roots for d in glob.glob(os.path.join(r, "nvidia", "**", "lib"), recursive=True)})))
PYEOF
)
  cat > "$WORK/env.sh" <<ENVEOF
export PYTHONPATH="$SITE:$REPO/src\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$NV\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export TKI_TRT_CACHE="$WORK/trt-cache"
export PYTHONUNBUFFERED=1
ENVEOF
fi
if ! has train && ! has export && ! has suite; then
  log "done in $(( $(now) - T0 )) s"; exit 0
fi
[ -f "$WORK/env.sh" ] || usage "run the install step first ($WORK/env.sh is missing)"
# shellcheck disable=SC1091
. "$WORK/env.sh"
cd "$WORK"

{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "nvidia-smi: none"
  "$PY" - <<'PYEOF'
import importlib.metadata as md, sys
print("python", sys.version.split()[0])
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
import open_clip, onnxruntime as ort
print("open_clip", open_clip.__version__, open_clip.__file__)
print("onnxruntime", ort.__version__, ort.__file__, ort.get_available_providers())
import tki_sdk
print("tki_sdk", tki_sdk.__file__)
PYEOF
} >>"$LOG" 2>&1 || { log "the environment does not import (see the log)"; exit 1; }
if [ "$DEVICE" = cuda ] && [ "$PRESET" = stretch ] && \
   ! "$PY" -c "import onnxruntime as o, sys; sys.exit(0 if 'CUDAExecutionProvider' in o.get_available_providers() else 1)"; then
  log "onnxruntime here has no CUDAExecutionProvider: onnxruntime-gpu did not install (see the log)"; exit 1
fi
log "environment ok"

# ---------------------------------------------------------------------------------------------- train
if has train; then
  if [ -f "$CKPT/config.json" ]; then
    log "checkpoint $CKPT already here (an earlier call on this machine): not trained again"
  else
    log "tki train --model $MODEL (random init, a few steps) on $DEVICE"
    "$PY" -m tki_sdk.cli.main train --model "$MODEL" --classes dog,elephant,giraffe,guitar,horse,house,person \
      --out "$CKPT" --prompts 4 --steps-expand 5 --steps-aggregate 10 --device "$DEVICE" --no-progress >>"$LOG" 2>&1 \
      || { log "training failed (see the log)"; exit 1; }
  fi
fi

# ---------------------------------------------------------------------------------------------- export
if has export; then
  log "tki-export fp32,fp16 (no TensorRT on this machine)"
  CAL=()
  [ -n "$IMAGES" ] && CAL=(--calib-images "$IMAGES")
  "$PY" -m tki_sdk.cli.export --checkpoint "$CKPT" --out "$EXPORT" --overwrite --precision fp32,fp16 "${CAL[@]}" \
    --max-batch 256 --threads "$(nproc)" --val-count 8 --no-timing --no-progress >>"$LOG" 2>&1 \
    || { log "export failed (see the log)"; exit 1; }
  cp "$EXPORT/parity.json" "$RESULTS/gpu/${NAME}_export_parity.json" 2>/dev/null || true
fi

# ---------------------------------------------------------------------------------------------- suite
if has suite; then
  DS=()
  [ -n "$IMAGES" ] && DS=(--dataset-dir "$IMAGES")
  SEC=()
  [ -n "$SECONDS_PER" ] && SEC=(--seconds "$SECONDS_PER")
  if [ "$PRESET" = budget ]; then
    ARGS=(--preset budget --checkpoint "$CKPT")
  else
    ARGS=(--preset full --model-dir "$EXPORT" --checkpoint "$CKPT" --no-e2e --seconds "${SECONDS_PER:-1}" --warmup 5
          --backends torch-fp16,ort-fp32-cuda,ort-fp16-cuda-host,ort-fp16-cuda-iobind,ort-fp16-cuda-graph)
    SEC=()
  fi
  [ "$DEVICE" = cpu ] && ARGS+=(--device cpu)
  log "tki-bench gpu ${ARGS[*]} ${SEC[*]}"
  "$PY" -m tki_sdk.cli.bench gpu "${ARGS[@]}" "${SEC[@]}" "${DS[@]}" --out-dir "$RESULTS" --name "$NAME" \
    --no-progress >>"$LOG" 2>&1 || { log "tki-bench gpu failed (see the log)"; exit 1; }
  log "results: $(ls "$RESULTS/gpu" | tr '\n' ' ')"
fi
log "done in $(( $(now) - T0 )) s"
