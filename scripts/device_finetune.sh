#!/usr/bin/env bash
# Fine-tune shipped models on one GPU (the device tool), in one call: unless STAGES is given, probe
# the training-step speed per batch size and memory layout and pick the batch; then train MODELS
# concurrently for TB seconds from the shipped files, and pack the results into one file.
# Example (the RGB denoiser alone, batch found best on an H200, with a profile first):
#   MODELS=small-denoise-rgb TB=480 STAGES="192:32,256:16" FLAGS=--dense-groups LR=1e-4 LOSS=psnr bash scripts/device_finetune.sh
# Needs .whl/ (dask, zarr, ... wheels for the device's Python) and .traindata/ (the bundled images).
set -euo pipefail
TB=${TB:-430}
DEVICE=${DEVICE:-cuda}
PROBE=${PROBE:-192:16 192:32}
MODELS=${MODELS:-small-denoise-gray small-denoise-rgb}
LR=${LR:-4e-4}
STAGES=${STAGES:-}  # empty: probe the speed and choose the batch
PROFILE=${PROFILE:-}  # e.g. 192:32: first profile 5 training steps (top operators, ~15 s)
LOSS=${LOSS:-l1}  # l1, l2 or psnr (minus the per-patch PSNR: the last RGB runs' choice)
EMA=${EMA:-0.999}  # export a moving average of the weights (0 = off; see docs/NOTES.md)
OUTDIR=${OUT:-runs/out}
mkdir -p "$OUTDIR" runs
pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader || true
if [ -n "$PROFILE" ]; then
    python3 benchmarks/train_shipped.py --profile "$PROFILE" --out-dir runs/profile --device "$DEVICE" \
        --data-dir .traindata 2>&1 | grep -v '^USDT' | head -n 30 || true
fi
if [ -z "$STAGES" ]; then
    python3 benchmarks/train_shipped.py --probe $PROBE --probe-iters 16 --out-dir runs/probe \
        --device "$DEVICE" --data-dir .traindata --quiet 2>&1 | grep '^{'
    read -r B FLAGS < <(python3 - <<'PY'
import json
rows = json.load(open("runs/probe/probe.json"))
t = {(r["batch"], r["channels_last"], r["dense_groups"]): r["s_per_iter"] for r in rows}
sizes = sorted({r["batch"] for r in rows})
variants = sorted({k[1:] for k in t}, key=lambda v: sum(t[(s,) + v] for s in sizes))
v = variants[0]  # the fastest layout / convolution variant over all probed batch sizes
b = sizes[0]
for nb in sizes[1:]:  # double the batch while that costs less than 1.5x the step time
    if t[(nb,) + v] <= 1.5 * t[(b,) + v]:
        b = nb
    else:
        break
print(b, ("--channels-last " if v[0] else "") + ("--dense-groups" if v[1] else ""))
PY
)
    echo "chosen batch $B ${FLAGS:-(NCHW, grouped convolutions)}"
    STAGES="128:$((2 * B)),192:$B,256:$(((B + 1) / 2))"
else
    FLAGS=${FLAGS:-}  # e.g. --dense-groups
fi
timeout $((TB + 100)) python3 benchmarks/train_shipped.py --all --only $MODELS \
    --init-dir napari_mirnet/models --out-dir runs/ft --device "$DEVICE" --data-dir .traindata \
    --time-budget "$TB" --lr "$LR" --warmup 0.05 --threads 4 --log-every 50 \
    --stages "$STAGES" --ema "$EMA" --loss "$LOSS" $FLAGS || echo "training exit $?"
tail -n 3 runs/ft/*.log || true
tar czf "$OUTDIR/ft.tgz" --exclude="*.ckpt.pth" runs/ft $(ls runs/probe/probe.json runs/profile/profile.txt 2>/dev/null)
