#!/usr/bin/env bash
# Issue 16: fine-tune both shipped denoisers on one lent GPU in one call (about 8 minutes of training
# each, side by side), from the shipped files, with the new data (a share of dead-leaves images in
# each batch; blind Gaussian 0-55, camera and, for gray, Poisson-Gaussian noise). Each run keeps the
# weights with the best PSNR on the validation split (checked every VAL_EVERY iterations), exports
# those, then evaluates the test split once; everything but the resumable checkpoints is packed into
# $OUT/d16.tgz (per run: .pth (the chosen weights, fp16), .eval.json with validation and test figures, .val.jsonl
# for the plot of validation PSNR against training time, .loss.jsonl, .log).
#
# 1. Here, once:   bash scripts/device_train_denoisers.sh prepare
#    (writes .traindata/: the bundled training and validation sources; .testdata/: the test images
#    as .npy, for a device without PyWavelets/matplotlib; .whl/ is described in docs/NOTES.md)
# 2. On the device: run(command="bash scripts/device_train_denoisers.sh",
#                       carry=[".whl", ".traindata", ".testdata"], timeout_s=600)
# 3. Here: unpack, python benchmarks/quality.py --models-dir <dir> (BM3D/NLM on both splits) and
#    ship a file only if the validation split prefers it; report its test rows as they come.
# Smoke test on a CPU (tiny sizes, seconds of training):
#    SMOKE=1 DEVICE=cpu OUT=/tmp/d16 RUN=/tmp/d16/run bash scripts/device_train_denoisers.sh
set -euo pipefail
if [ "${1:-}" = prepare ]; then
    python3 - <<'PY'
import shutil
from pathlib import Path

import skimage

from napari_mirnet.training import PACKAGE_TRAIN_IMAGES, _package_dir, save_test_images

dst = Path(".traindata")
dst.mkdir(exist_ok=True)
for f in (Path(skimage.__file__).parent / "data").iterdir():
    if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif"):
        shutil.copy2(f, dst / f.name)
for name, (package, rel) in PACKAGE_TRAIN_IMAGES.items():
    root = _package_dir(package)
    if root is not None and (root / rel).exists():
        shutil.copy2(root / rel, dst / f"{name}{Path(rel).suffix}")
    else:
        print(f"note: {name} not found ({package} not installed): trained without it")
print("test images:", save_test_images(".testdata"))
PY
    for d in .traindata .testdata .whl; do
        grep -qx "$d" .git/info/exclude 2>/dev/null || echo "$d" >>.git/info/exclude
    done
    exit 0
fi
TB=${TB:-450}             # seconds of training per model (both train at once on the one GPU)
DEVICE=${DEVICE:-cuda}
MODELS=${MODELS:-small-denoise-gray small-denoise-rgb}
LR=${LR:-2e-4}            # a fine-tune: below the from-scratch 5e-4
STAGES=${STAGES:-128:32,192:16,256:8}
PROC=${PROC:-0.3}         # share of each batch from dead leaves
VAL_EVERY=${VAL_EVERY:-200}
EMA=${EMA:-0.999}
LOSS=${LOSS:-l1}
OUTDIR=${OUT:-runs/out}
RUN=${RUN:-runs/d16}
SLACK=${SLACK:-120}  # seconds for start-up and the final evaluations
EXTRA=()
if [ -n "${SMOKE:-}" ]; then  # seconds on a CPU: is everything wired?
    TB=${SMOKE_TB:-20}
    SLACK=900
    STAGES=32:2
    VAL_EVERY=2
    EXTRA=(--procedural-bank 2 --procedural-size 64 --val-crop 48 --eval-crop 48 --threads 1)
fi
mkdir -p "$OUTDIR" runs
if compgen -G ".whl/*.whl" >/dev/null; then
    pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader 2>/dev/null || true
DATA=()
[ -d .traindata ] && DATA+=(--data-dir .traindata)
[ -d .testdata ] && DATA+=(--test-dir .testdata)
rc=0
# a fresh init from the shipped files: a session that had a good result ships it first, so the
# next one resumes from it
timeout $((TB + SLACK)) python3 benchmarks/train_shipped.py --all --only $MODELS \
    --init-dir napari_mirnet/models --out-dir "$RUN" --device "$DEVICE" "${DATA[@]}" \
    --time-budget "$TB" --lr "$LR" --warmup 0.02 --log-every 50 --stages "$STAGES" --ema "$EMA" \
    --loss "$LOSS" --procedural "$PROC" --val-every "$VAL_EVERY" --blind-noise "${EXTRA[@]}" || rc=$?
echo "training exit $rc"
tail -n 2 "$RUN"/*.log || true
python3 - "$RUN" <<'PY' || true
import json, sys
from pathlib import Path

for f in sorted(Path(sys.argv[1]).glob("*.eval.json")):
    r = json.loads(f.read_text())
    print(r["name"], "it", r["iterations"], "selected", r["selected"], "\n  validation", r["eval"], "\n  test", r["test"])
PY
# the exported .pth is the best checkpoint in fp16: the fp32 copy and the resumable state stay behind
tar czf "$OUTDIR/d16.tgz" --exclude="*.ckpt.pth" --exclude="*.best.pth" "$RUN"
exit $rc
