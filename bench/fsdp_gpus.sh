#!/usr/bin/env bash
# FSDP on a node of several GPUs (NCCL, bf16, torch.compile per block, activation checkpointing):
# what the CPU tests cannot check, in a few minutes, no network.
#   1. 40 steps of a GPT-2 124M-shaped model on all N GPUs, uninterrupted;
#   2. the same run stopped after 20 steps on N GPUs and resumed to 40 on N/2 (8 -> 4): how far
#      its losses are from the uninterrupted run's (bf16: printed, not a bit-for-bit match);
#   3. the finished run, consolidated to ckpt/last.pt, sampled;
#   4. memory per GPU under DDP and FSDP, with and without activation checkpointing, beside the
#      plan's figures (bench/memory_plan.py ranks --device cuda).
#
#   bench/fsdp_gpus.sh                  # all visible GPUs (at least 2); writes runs/_fsdp/<time>/
#   SMOKE=1 bench/fsdp_gpus.sh          # the same steps, tiny, on the CPU with 2 gloo processes
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
SHARED=${SHARED:-../shared}
OUT=${OUT:-runs/_fsdp/$(date +%Y%m%d-%H%M%S)}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled
N=$($PY -c "import torch; print(torch.cuda.device_count())")
LAYERS=12 HEADS=12 WIDTH=768 BLOCK=1024 MICRO=8 DEVICE=cuda
HW=(hardware=gpu_node hardware.strategy=fsdp hardware.activation_checkpointing=block)
if [ "${SMOKE:-0}" = 1 ]; then  # tiny stand-ins, to check the script end to end without GPUs
  N=2 LAYERS=2 HEADS=2 WIDTH=64 BLOCK=64 MICRO=4 DEVICE=cpu
  HW=(hardware=cpu hardware.dtype=float32 hardware.compile=false hardware.strategy=fsdp
      hardware.activation_checkpointing=block hardware.num_threads=1)
fi
if [ "$N" -lt 2 ]; then echo "needs at least 2 GPUs (found $N): FSDP on one process has nothing to shard"; exit 2; fi
HALF=$(( N / 2 ))
mkdir -p "$OUT"
$PY prepare/shakespeare_char.py --input "$SHARED/data/tinyshakespeare/input.txt" --out-dir "$OUT/data/shakespeare_char"
COMMON=(data=shakespeare_char "data.root=$OUT/data" "${HW[@]}" model.n_layer=$LAYERS model.n_head=$HEADS
        model.n_embd=$WIDTH model.block_size=$BLOCK hardware.micro_batch_size=$MICRO
        task.tokens_per_step=$(( N * 2 * MICRO * BLOCK )) optim.decay_iters=40 task.eval_interval=20
        task.eval_iters=20 task.log_interval=1 task.plot=false task.sample_tokens=100)
run() { local n=$1; shift; timeout 600 $PY -m torch.distributed.run --standalone --nproc_per_node="$n" launch.py "$@"; }

echo "== 1. uninterrupted: 40 steps on $N ranks"
run "$N" "${COMMON[@]}" task.max_iters=40 run="$OUT/whole"
echo "== 2. 20 steps on $N ranks, then resumed to 40 on $HALF"
run "$N" "${COMMON[@]}" task.max_iters=20 task.num_samples=0 run="$OUT/split"
run "$HALF" "${COMMON[@]}" task.max_iters=40 init_from=resume run="$OUT/split"
echo "== 3. consolidated (ckpt/last.pt), sampled"
ls -l "$OUT/split/ckpt"
$PY launch.py task=sample run="$OUT/split" task.which=last task.num_samples=1 task.max_new_tokens=100 "${HW[0]}"
echo "== 4. memory per rank: DDP vs FSDP"
$PY bench/memory_plan.py ranks --device $DEVICE --nproc $N --layers $LAYERS --heads $HEADS --width $WIDTH \
  --block $BLOCK --vocab 50304 --micro $MICRO | tee "$OUT/memory.txt"

$PY - "$OUT" <<'PYEOF'
import json, sys
out = sys.argv[1]
def losses(run):
    return {r["iter"]: r["loss"] for r in map(json.loads, open(f"{out}/{run}/metrics.jsonl")) if r["kind"] == "train"}
a, b = losses("whole"), losses("split")
worst = max(abs(a[i] - b[i]) / a[i] for i in range(21, 41))
print(f"\nresumed on half the ranks: steps 21-40 within {worst:.2e} (relative) of the uninterrupted run's; "
      f"final loss {a[40]:.4f} vs {b[40]:.4f}")
PYEOF
