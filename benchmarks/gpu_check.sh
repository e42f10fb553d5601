#!/usr/bin/env bash
# The checks behind the GPU figures in docs/speed.md, on a machine with an NVIDIA GPU and vaecli installed:
# `vae train device=cuda`, its checkpoint opened by every inspection command with no GPU visible,
# `vae evaluate` on the GPU and the CPU, a batched default study on the GPU (a member's checkpoint
# opened on the CPU), and benchmarks/sweep_speed.py's basic-against-batched figures on the GPU.
#
#   DATA_ROOT=~/.cache/vaecli bash benchmarks/gpu_check.sh      (WORK: scratch folder, default /tmp/vaecli-gpu)
set -u
export PYTHONUNBUFFERED=1
DEV=${DEV:-cuda}; STEPS=${STEPS:-1024}; PY=${PY:-python3}
D=${DATA_ROOT:-$HOME/.cache/vaecli}; W=${WORK:-/tmp/vaecli-gpu}
rm -rf "$W"; mkdir -p "$W"
TIMEFORMAT='[time] %R s wall, %U s user'
vae() { "$PY" -m vaecli "$@"; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'cpus', torch.get_num_threads())"

echo "== 1. vae train device=$DEV (the seed config)"
time vae train device="$DEV" train.steps="$STEPS" data.root="$D" hydra.run.dir="$W/solo" 2>&1 | tail -8
grep -E '"(device|gpu|torch)"' "$W/solo/provenance.json"

echo "== 2. its checkpoint with no GPU visible"
for cmd in reconstruct traverse sample interpolate embed; do
  extra=(); [ "$cmd" = embed ] && extra=(--dims 0,1)
  CUDA_VISIBLE_DEVICES= vae "$cmd" -c "$W/solo" "${extra[@]}" --device cpu -o "$W/cpu_$cmd.png" 2>&1 | tail -1
done

echo "== 3. vae evaluate, k=1000 on the first 500 test images, on $DEV and on the CPU"
time vae evaluate -c "$W/solo" --k 1000 --n 500 --device "$DEV" 2>&1 | head -14
time CUDA_VISIBLE_DEVICES= vae evaluate -c "$W/solo" --k 1000 --n 500 --device cpu 2>&1 | head -14

echo "== 4. the default study, batched, on $DEV"
time vae sweep hydra/launcher=batched device="$DEV" train.steps="$STEPS" data.root="$D" hydra.sweep.dir="$W/batched" 2>&1 | tail -25
member=$(dirname "$(ls "$W"/batched/*/checkpoint.pt | head -1)")
CUDA_VISIBLE_DEVICES= vae traverse -c "$member" --device cpu -o "$W/member_traverse.png" 2>&1 | tail -1

echo "== 5. basic against batched on $DEV"
for grid in default beta8; do
  "$PY" "$(dirname "$0")/sweep_speed.py" --grid $grid --launchers basic,batched --steps "$STEPS" --device "$DEV" data.root="$D"
done
