#!/usr/bin/env bash
# One GPU, no network, under 8 minutes compilation included:
#   1. GPT-2 124M (block 1024) training-step speed with torch.compile and bf16: tokens/s and MFU;
#   2. nanoGPT's shakespeare_char recipe trained for ~2 minutes: its val loss.
# The char data is prepared from the local copy of tiny Shakespeare (no download).
#
#   bench/gpu.sh                         # writes runs/_gpu/<time>/, prints the figures at the end
#   MICRO_BATCH=32 bench/gpu.sh          # a larger 124M micro-batch (more memory, often higher MFU)
#   SMOKE=1 bench/gpu.sh                 # the same steps with tiny models on the CPU (checks the script)
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python}
SHARED=${SHARED:-../shared}
OUT=${OUT:-runs/_gpu/$(date +%Y%m%d-%H%M%S)}
MICRO_BATCH=${MICRO_BATCH:-16}
TRAIN_SECONDS=${TRAIN_SECONDS:-120}
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled

HW=(hardware=gpu)
BIG=(model=gpt2_124m "hardware.micro_batch_size=$MICRO_BATCH" task.iters=30 task.warmup=5)
# nanoGPT's config/train_shakespeare_char.py
CHAR=(model=baby model.n_layer=6 model.n_head=6 model.n_embd=384 model.block_size=256 model.dropout=0.2
      hardware.micro_batch_size=64 optim.lr=1e-3 optim.min_lr=1e-4 optim.beta2=0.99 optim.warmup_iters=100)
if [ "${SMOKE:-0}" = 1 ]; then  # tiny stand-ins, to check the script end to end without a GPU
  HW=(hardware=cpu hardware.compile=false)
  BIG=(model.n_layer=2 model.n_head=2 model.n_embd=64 model.block_size=128 hardware.micro_batch_size=2
       task.iters=3 task.warmup=1)
  CHAR=(model=baby model.n_layer=2 model.n_head=2 model.n_embd=64 model.block_size=64 hardware.micro_batch_size=8
        optim.warmup_iters=10)
  TRAIN_SECONDS=${SMOKE_SECONDS:-5}
fi
mkdir -p "$OUT"
START=$(date +%s)
echo "== GPU benchmark into $OUT"
$PY -c "import torch; print('torch', torch.__version__, '|', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')"

echo "== 1. GPT-2 124M, block 1024: the training step (forward, backward, AdamW)"
timeout 300 $PY launch.py task=bench "${HW[@]}" "${BIG[@]}" hydra.run.dir="$OUT/bench_124m"

echo "== 2. shakespeare_char for ${TRAIN_SECONDS} s"
$PY prepare/shakespeare_char.py --input "$SHARED/data/tinyshakespeare/input.txt" --out-dir "$OUT/data/shakespeare_char"
DATA=(data=shakespeare_char "data.root=$OUT/data")
# time the recipe's step (this compiles it; the training run below reuses the compiled kernels),
# then size the run to TRAIN_SECONDS of training; it evaluates at its start and end only
timeout 240 $PY launch.py task=bench "${HW[@]}" "${DATA[@]}" "${CHAR[@]}" task.synthetic=false task.iters=20 \
  task.measure_peak=false hydra.run.dir="$OUT/bench_char"
ITERS=$($PY -c "import json; print(max(1, int($TRAIN_SECONDS * 1000 / json.load(open('$OUT/bench_char/bench.json'))['ms_per_iter'])))")
timeout 300 $PY launch.py "${HW[@]}" "${DATA[@]}" "${CHAR[@]}" task.max_iters="$ITERS" task.eval_interval="$ITERS" \
  task.eval_iters=200 task.log_interval=100 task.plot=false run="$OUT/char"

$PY - "$OUT" "$(( $(date +%s) - START ))" <<'EOF'
import json, sys
out, wall = sys.argv[1], int(sys.argv[2])
b = json.load(open(f"{out}/bench_124m/bench.json"))
s = json.load(open(f"{out}/char/summary.json"))
mfu = f"{b['mfu'] * 100:.1f}%" if b["mfu"] is not None else "n/a (GPU not in the peak table)"
print(f"\nGPT-2 124M: {b['ms_per_iter']:.1f} ms/iter for {b['tokens_per_iter']:,} tokens | "
      f"{b['tokens_per_s']:,.0f} tokens/s | MFU {mfu} | peak memory {b['peak_memory_bytes'] / 2**30:.1f} GiB | "
      f"first step (compile) {b['first_step_s']:.0f} s")
print(f"shakespeare_char: {s['iters']} iters in {s['wall_time_s']:.0f} s | val loss {s['final_val_loss']:.4f} "
      f"(nanoGPT: 1.4697 after 5000 iters) | {s['tokens_per_s'] or 0:,.0f} tokens/s")
print(f"total wall time {wall} s (budget: 480 s)")
EOF
