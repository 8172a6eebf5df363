import json
import sys
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")
import torch
import train_shipped as ts

from napari_mirnet.training import TrainConfig, train, training_images

imgs = list(training_images(".traindata").values())
fields = dict(ts.SHIPPED["small-denoise-gray"])
fields.pop("colour_only", None)
n = int(sys.argv[1])
variants = sys.argv[2:]
for v in variants:
    threads, cl = int(v[0]), v[1:] == "cl"
    torch.set_num_threads(threads)
    cfg = TrainConfig(
        **fields, iters=n, stages=((96, 8),), device="cpu", channels_last=cl, log_every=10**9, save_every=10**9
    )
    marks = {}

    def tick(it, _l):
        marks[it] = (time.perf_counter(), time.process_time())

    train(cfg, clean=imgs, out=Path("/tmp/d16/probe.pth"), callback=tick, progress=False)
    w = (marks[n][0] - marks[2][0]) / (n - 2)
    c = (marks[n][1] - marks[2][1]) / (n - 2)
    print(
        json.dumps(
            {"threads": threads, "channels_last": cl, "wall_s_per_step": round(w, 2), "cpu_s_per_step": round(c, 2)}
        ),
        flush=True,
    )
