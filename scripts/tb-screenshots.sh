#!/usr/bin/env bash
# PNGs of TensorBoard's pages for a run or sweep folder, taken by headless Chromium.
#
#   scripts/tb-screenshots.sh LOGDIR OUTDIR [PAGE ...]     (pages default: scalars hparams images)
#
# Starts `tensorboard --logdir LOGDIR` on a free local port, waits until it serves, then
# screenshots each page. TensorBoard's pages are JavaScript apps that fetch their data after
# loading, so Chromium gets a virtual-time budget to finish before the picture is taken.
# Chromium comes from Debian (apt-get install chromium); --no-sandbox because this runs as root.
# Environment: PYTHON (default .venv/bin/python), WIDTH x HEIGHT (default 1600 x 1000).
set -euo pipefail

logdir=${1:?usage: $0 LOGDIR OUTDIR [PAGE ...]}
out=${2:?usage: $0 LOGDIR OUTDIR [PAGE ...]}
shift 2
pages=("$@")
[ ${#pages[@]} -gt 0 ] || pages=(scalars hparams images)
python=${PYTHON:-.venv/bin/python}
browser=$(command -v chromium || command -v chromium-browser || true)
[ -n "$browser" ] || { echo "no chromium: apt-get install chromium" >&2; exit 2; }

mkdir -p "$out"
log="$out/tensorboard.log"
"$python" -m tensorboard.main --logdir "$logdir" --host 127.0.0.1 --port 0 2>"$log" &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT

url=""
for _ in $(seq 1 300); do # up to a minute
    url=$(grep -o 'http://127.0.0.1:[0-9]*' "$log" | head -1 || true)
    [ -n "$url" ] && break
    kill -0 "$server" 2>/dev/null || { cat "$log" >&2; exit 1; }
    sleep 0.2
done
[ -n "$url" ] || { echo "tensorboard did not start; see $log" >&2; exit 1; }

for page in "${pages[@]}"; do
    "$browser" --headless=new --no-sandbox --disable-gpu --disable-dev-shm-usage --hide-scrollbars \
        --window-size="${WIDTH:-1600},${HEIGHT:-1000}" --virtual-time-budget=20000 \
        --screenshot="$out/$page.png" "$url/#$page" >/dev/null 2>&1
    echo "$out/$page.png"
done
