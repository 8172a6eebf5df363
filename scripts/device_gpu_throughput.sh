#!/usr/bin/env bash
# Issue 18 on a lent GPU in one call: benchmarks/gpu_throughput.py (engine with the fast forward,
# engine eager as before, the raw forward and the official demo's naive tiling, on an 8192^2 RGB
# uint8 image and a 16 x 2048^2 uint16 stack, zarr -> zarr; GPU utilisation, peak memory; tiled vs
# whole PSNR; bf16 vs fp32 differences). Results: $OUT/gpu_throughput.txt and .json, rewritten
# after every measurement, so a run cut short by the time limit still returns what it measured.
#
# 1. Here, once: the wheels the device lacks, in .whl/ (docs/NOTES.md, "Device-tool lessons").
# 2. On the device: run(command="bash scripts/device_gpu_throughput.sh", carry=[".whl"], timeout_s=600)
#    Half the pixels if the first call ran out of time:
#      run(command="ARGS='--rgb-size 4096 --stack 8x2048' bash scripts/device_gpu_throughput.sh", ...)
#    Other switches for the new path: ACCEL=bf16_weights,channels_last,cudnn_benchmark (no compile)
#    or ACCEL=on,cudagraphs ... (see napari_mirnet/engine/accelerate.py).
# 3. Here: copy $OUT/gpu_throughput.txt to benchmarks/results/gpu_throughput_<card>.txt.
# Smoke test on a CPU (tiny sizes, the stand-in model, no compile):
#    SMOKE=1 OUT=/tmp/gt bash scripts/device_gpu_throughput.sh
set -euo pipefail
TL=${TL:-540}           # seconds for the benchmark; the device call's limit is 600
ACCEL=${ACCEL:-on}      # RestoreOptions.accelerate of the new path
ARGS=${ARGS:-}
OUTDIR=${OUT:-benchmarks/results}
mkdir -p "$OUTDIR"
if ls .whl/*.whl >/dev/null 2>&1; then
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
else
    export PYTHONPATH=$PWD
fi
# one inductor cache for the whole call: the fresh-process row measures what the cache saves
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/napari-mirnet-inductor}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
python3 -c "import torch, dask, zarr; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'dask', dask.__version__, 'zarr', zarr.__version__)"
# the overlapped-copies test needs a card: same output as blocking copies, wait outside the lock
if [ -z "${SMOKE:-}" ] && python3 -c "import pytest" 2>/dev/null; then
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_accelerate.py -k overlap 2>&1 | tail -3 \
        | tee "$OUTDIR/gpu_tests.txt" || true
fi
if [ -n "${SMOKE:-}" ]; then
    timeout "$TL" python3 benchmarks/gpu_throughput.py --smoke --device cpu --out "$OUTDIR" $ARGS
else
    timeout "$TL" python3 benchmarks/gpu_throughput.py --out "$OUTDIR" --accelerate "$ACCEL" --second-process $ARGS \
        || echo "benchmark exit $? (results so far in $OUTDIR/gpu_throughput.txt)"
fi
