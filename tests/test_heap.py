"""CPU runs keep glibc's freed heap for reuse, and hand it back when the last run ends (engine/heap.py).

Each check runs in a fresh process: the thresholds are process-wide, and a fresh heap is what the
page-fault counts are about."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import numpy as np
import pytest
from conftest import SAFETY_S

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="the heap settings are glibc's"
)

# what a forward pass does to the heap: several maps of 10 MiB alive at once, then all freed
CYCLES = """
import json, resource, numpy as np
from pathlib import Path
from napari_mirnet.engine import heap

def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt

def rss_mib():
    line = next(v for v in Path("/proc/self/status").read_text().splitlines() if v.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024

def cycle():
    maps = [np.ones(10 * 2**20 // 8) for _ in range(4)]
    del maps

def faults_of(n=5):
    cycle()  # the first cycle maps fresh memory in any case
    f = faults()
    for _ in range(n):
        cycle()
    return faults() - f

out = {"default": faults_of()}
with heap.keep_freed_memory():
    out["kept"] = faults_of()
    out["rss_in"] = rss_mib()
out["rss_after"] = rss_mib()
print(json.dumps(out))
"""


def _python(code: str, *args: str, env: dict | None = None, timeout: int = SAFETY_S) -> dict:
    """Run ``code`` in a fresh interpreter and return the JSON its last line prints."""
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_freed_maps_are_reused_during_a_run_and_handed_back_after_it():
    r = _python(CYCLES)
    # glibc's default hands the freed top of the heap back, and the next cycles map it afresh
    # (here about 40 MiB of fresh pages over 5 cycles)
    assert r["default"] > 5000, r
    assert r["kept"] < r["default"] / 20, r
    # the kept 40 MiB is returned when the run ends
    assert r["rss_in"] - r["rss_after"] > 30, r


def test_the_environment_leaves_glibc_alone():
    r = _python(CYCLES, env={"NAPARI_MIRNET_MALLOC": "default"})
    assert r["kept"] > r["default"] / 2, r


ENGINE = """
import json, resource, sys, numpy as np
from napari_mirnet import engine

img = (np.random.default_rng(0).random((520, 520, 3)) * 255).astype(np.uint8)
opts = engine.RestoreOptions(tile=256, halo=16, device="cpu")
engine.execute(engine.prepare(img[:256, :256], weights=sys.argv[1], options=opts))  # warm-up
f = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
out = engine.execute(engine.prepare(img, weights=sys.argv[1], options=opts))
np.save(sys.argv[2], out)
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f}))
"""


@pytest.mark.slow
def test_a_cpu_run_page_faults_far_less_and_gives_the_same_pixels(tiny_weights, tmp_path):
    """The same run with glibc's defaults maps its activations afresh at nearly every tile."""
    runs = {
        name: _python(ENGINE, tiny_weights, str(tmp_path / f"{name}.npy"), env=env)
        for name, env in (("kept", {}), ("default", {"NAPARI_MIRNET_MALLOC": "default"}))
    }
    assert runs["kept"]["faults"] < runs["default"]["faults"] / 4, runs
    # the allocator changes where memory comes from, not the arithmetic (up to the last-bit
    # differences any two CPU processes may show: docs/NOTES.md)
    kept, default = np.load(tmp_path / "kept.npy"), np.load(tmp_path / "default.npy")
    diff = np.abs(kept.astype(int) - default.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-4
