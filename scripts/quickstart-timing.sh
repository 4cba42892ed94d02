#!/usr/bin/env bash
# Times the README's first command from a fresh clone with no pip cache (venv + pip install -e ".[all]" +
# tki demo), counts the lines `tki demo > log 2>&1` writes, and records the result with the machine under
# benchmarks/results/quickstart/. Usage: bash scripts/quickstart-timing.sh [NAME]
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
NAME=${1:-fresh-clone}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
# the demo reads PACS beside the checkout; the clone lives elsewhere, so point it at this checkout's copy
if [ -z "${TKI_PACS_DIR:-}" ] && [ -d "$REPO/../shared/data/pacs/images" ]; then
    export TKI_PACS_DIR="$REPO/../shared/data/pacs/images"
fi
fail() { echo "quickstart-timing: $1 failed; its log:" >&2; tail -20 "$2" >&2; exit 1; }
git clone -q "$REPO" "$WORK/tki-sdk"
cd "$WORK/tki-sdk"
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
T0=$(date +%s.%N)
PIP_NO_CACHE_DIR=1 bash -c 'python3 -m venv .venv && .venv/bin/pip install --quiet -e ".[all]"' > "$WORK/install.log" 2>&1 \
    || fail install "$WORK/install.log"
T1=$(date +%s.%N)
.venv/bin/tki demo > "$WORK/demo.log" 2>&1 || fail "tki demo" "$WORK/demo.log"
T2=$(date +%s.%N)
LINES=$(wc -l < "$WORK/demo.log")
LOAD_AFTER=$(cut -d' ' -f1-3 /proc/loadavg)
.venv/bin/python - "$REPO/benchmarks/results" "$NAME" "$T0" "$T1" "$T2" "$LINES" "$LOAD_BEFORE" "$LOAD_AFTER" "$WORK/demo.log" <<'PY'
import sys
from tki_sdk.benchmarks.results import write_result
out, name, t0, t1, t2, lines, lb, la, log = sys.argv[1:]
t0, t1, t2 = float(t0), float(t1), float(t2)
tail = open(log, encoding="utf-8", errors="replace").read().splitlines()[-12:]
path = write_result(out, "quickstart", name, {
    "install_seconds": round(t1 - t0, 1), "demo_seconds": round(t2 - t1, 1), "total_seconds": round(t2 - t0, 1),
    "demo_log_lines": int(lines), "pip_cache": "disabled (PIP_NO_CACHE_DIR=1)",
    "load_average_before": [float(x) for x in lb.split()], "load_average_after": [float(x) for x in la.split()],
    "weights": "random-init ViT-B-32 (tki demo's default; no pretrained weights)", "demo_log_tail": tail,
}, command="python3 -m venv .venv && .venv/bin/pip install -e '.[all]' && .venv/bin/tki demo  (fresh clone)")
print(path)
PY
