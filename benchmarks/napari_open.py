"""Opening a large restored OME-Zarr in napari: with its pyramid vs a single level (issue 14 item 6).

    xvfb-run -a -s "-screen 0 1280x1024x24" python benchmarks/napari_open.py   # 16384^2, 2-3 min
    ... python benchmarks/napari_open.py --size 8192                              # quicker

Writes a ``size``^2 uint16 image (smooth ramps plus noise: compressible, not constant) twice: with
the plugin's napari writer (``napari_io.write_ome_zarr``: a pyramidal OME-Zarr 0.5) and as a
single-level OME-Zarr with the same chunks. Each is then opened in a fresh process with napari's
builtin reader, and the pyramid once more with the plugin's reader (``Viewer(show=False)``; it needs an X display with OpenGL: xvfb-run): wall time from ``viewer.open`` until the layer
is in the layer list, and the peak RSS increase (sampled every 5 ms) over the process's RSS just before (the viewer and
napari already loaded, and a 64^2 store opened and closed first). Every figure printed is measured in this run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, sys, threading, time
import psutil
import napari

path, warmup, plugin = sys.argv[1:4]
viewer = napari.Viewer(show=False)
# plugin discovery and the first GL layer cost seconds whatever the image: paid before the clock
t0 = time.perf_counter()
viewer.open(warmup, plugin=plugin)
first = time.perf_counter() - t0
viewer.layers.clear()

# sampled, not ru_maxrss: a spawned child inherits its parent's high-water mark through exec
proc, peak, done = psutil.Process(), [0], threading.Event()
def sample():
    while not done.is_set():
        peak[0] = max(peak[0], proc.memory_info().rss)
        time.sleep(0.005)
before = proc.memory_info().rss
thread = threading.Thread(target=sample, daemon=True)
thread.start()
t0 = time.perf_counter()
layers = viewer.open(path, plugin=plugin)
wall = time.perf_counter() - t0
done.set()
thread.join()
peak = max(peak[0], proc.memory_info().rss)
layer = layers[0]
levels = len(layer.data) if layer.multiscale else 1
print(json.dumps({"first_s": first, "wall_s": wall, "rss_increase": peak - before, "levels": levels}))
viewer.close()
"""


def _write(folder: Path, size: int) -> tuple[Path, Path]:
    import numpy as np
    import zarr

    from napari_mirnet.io.omezarr import multiscales_attrs
    from napari_mirnet.metadata import ImageMeta
    from napari_mirnet.napari_io import write_ome_zarr

    rng = np.random.default_rng(0)
    ramp = (np.arange(size, dtype=np.uint16) * 3) % 4096
    data = ramp[:, None] + ramp[None, :]
    data += rng.integers(0, 64, data.shape, dtype=np.uint16)
    state = {"name": "restored", "scale": (0.5, 0.5), "translate": (0.0, 0.0), "units": ("micrometer",) * 2}
    t = time.perf_counter()
    pyramid = Path(write_ome_zarr(str(folder / "pyramid.zarr"), data, state)[0])
    print(f"wrote {pyramid.name} with the plugin's writer in {time.perf_counter() - t:.1f} s")

    t = time.perf_counter()
    single = folder / "single.zarr"
    g = zarr.create_group(str(single), zarr_format=3)
    chunks = zarr.open_group(str(pyramid), mode="r")["0"].chunks
    g.create_array("0", data=data, chunks=chunks, dimension_names=["y", "x"])
    meta = ImageMeta(axes="YX", scale={"Y": 0.5, "X": 0.5}, units={"Y": "micrometer", "X": "micrometer"})
    g.attrs["ome"] = multiscales_attrs("YX", meta, name="restored", levels=1, dtype=data.dtype)
    print(f"wrote {single.name} (one level, chunks {chunks}) in {time.perf_counter() - t:.1f} s")
    return pyramid, single


def _open(path: Path, warmup: Path, plugin: str = "napari") -> dict:
    res = subprocess.run([sys.executable, "-c", CHILD, str(path), str(warmup), plugin], capture_output=True, text=True)
    if res.returncode:
        raise RuntimeError(f"opening {path} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--dir", type=Path, default=None, help="where the stores go (a temporary folder by default)")
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="napari_open_", dir=args.dir))
    try:
        print(f"napari_open: {args.size}^2 uint16, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
        pyramid, single = _write(folder, args.size)
        import numpy as np

        from napari_mirnet.io import write_image

        warmup = write_image(folder / "warmup.zarr", np.zeros((64, 64), np.uint16), "YX")
        rows = {}
        for label, path in (("single level", single), ("pyramid", pyramid)):
            r = rows[label] = _open(path, warmup)
            gib = r["rss_increase"] / 2**30
            print(
                f"{label:>12}: {r['levels']} level(s), open {r['wall_s']:.2f} s, peak RSS +{gib:.2f} GiB "
                f"(first open of a 64^2 store in that process, not counted: {r['first_s']:.2f} s)"
            )
        r = _open(pyramid, warmup, "napari-mirnet")
        print(
            f"pyramid, opened with the plugin's reader (scale, translation, units): {r['levels']} level(s), "
            f"open {r['wall_s']:.2f} s, peak RSS +{r['rss_increase'] / 2**30:.2f} GiB (first open in that "
            f"process, not counted: {r['first_s']:.2f} s; it imports napari_mirnet, torch included)"
        )
        s, p = rows["single level"], rows["pyramid"]
        print(
            f"single / pyramid: time {s['wall_s'] / p['wall_s']:.1f}x, "
            f"RSS increase {s['rss_increase'] / max(p['rss_increase'], 1):.1f}x"
        )
        print(
            f"(self peak RSS of the writer process: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB)"
        )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
