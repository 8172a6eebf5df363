"""Data where it lives (issue 32): the same restore local disk -> local disk vs s3 -> s3, and a COG crop's bytes.

1. Throughput. One OME-Zarr input (float32, 3 channels, random: little compresses) on the local disk
   and the same bytes uploaded to a local moto S3 server (``python -m moto.server`` on 127.0.0.1,
   started here). The same ``napari_mirnet.restore(..., out=<.ome.zarr>)`` runs local -> local and
   s3 -> s3 (``storage_options`` with the endpoint), alternately ``--repeats`` times, in one process;
   the best of each is reported as MB/s (input bytes per second) and chunks/s (level-0 output chunks
   per second), with the ratio. A stand-in model (an identity MIRNet-v2: n_feat 4, one block, its
   last convolution zeroed, so the output equals the input) keeps the forward as cheap as the
   engine allows; the in-memory run (numpy -> numpy, no I/O) of the same image is timed too, so
   ``run - in memory`` is what the storage costs. The s3 output is checked equal to the local one.
2. Bytes read vs bytes needed. A COG (GeoTIFF, 512x512 deflate tiles, overviews) on a local HTTP
   server that honours ``Range`` and counts the bytes it sends: ``open_image(url)`` and a 512x512
   crop of full resolution, then an overview level (``level=``) read whole.

    python benchmarks/remote.py [--size 4096] [--repeats 2] [--cog-size 8192] | tee benchmarks/results/remote.txt
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # this checkout; the tests' real servers (moto, Range HTTP)

import napari_mirnet as nm  # noqa: E402
from napari_mirnet import io as mio  # noqa: E402

MB = 1e6
TILE = dict(tile=512, halo=8, blend=0, device="cpu")


def stand_in(path: Path) -> str:
    """An identity MIRNet-v2, 3 -> 3 channels, as small as the architecture allows (n_feat 4, one block)."""
    import torch

    from napari_mirnet.model import MIRNetConfig, MIRNetV2

    torch.manual_seed(0)
    model = MIRNetV2(MIRNetConfig(n_feat=4, n_mrb=1, chan_factor=2.0))
    torch.nn.init.zeros_(model.conv_out.weight)  # the global residual then passes the input through
    torch.save({"params": model.state_dict()}, path)
    return str(path)


def upload(s3c, bucket: str, folder: Path, prefix: str) -> int:
    """Put every file of ``folder`` under ``prefix``; returns the bytes uploaded."""
    n = 0
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            data = f.read_bytes()
            s3c.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(folder).as_posix()}", Body=data)
            n += len(data)
    return n


def level0(url_or_path: str, storage_options: dict | None = None) -> np.ndarray:
    import zarr

    group = zarr.open_group(url_or_path, mode="r", storage_options=storage_options)
    return np.asarray(group["0"][...])


def timed(fn) -> float:
    from napari_mirnet.io import chunk_cache

    chunk_cache.clear()  # every run fetches its input afresh: no run is helped by the one before
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def throughput(tmp: Path, endpoint: str, size: int, repeats: int) -> None:
    import boto3
    import zarr

    options = {
        "key": "bench",
        "secret": "bench",
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }
    s3c = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench", aws_secret_access_key="bench"
    )
    s3c.create_bucket(Bucket="bench")
    weights = stand_in(tmp / "identity.pth")
    img = np.random.default_rng(0).random((size, size, 3), dtype=np.float32)
    local_in = Path(mio.write_image(tmp / "in.ome.zarr", img, "YXC"))
    stored = upload(s3c, "bench", local_in, "in.ome.zarr")
    src_url = "s3://bench/in.ome.zarr"
    print(f"input: {size}x{size}x3 float32, {img.nbytes / MB:.1f} MB in memory, {stored / MB:.1f} MB stored")
    print(f"stand-in model: identity MIRNet-v2 (n_feat 4, n_mrb 1); tile {TILE['tile']}, halo {TILE['halo']}, CPU")

    nm.restore(img[:256, :256], weights=weights, **TILE)  # warm-up: imports, model load, first forward
    mem_t = [timed(lambda: nm.restore(img, weights=weights, **TILE)) for _ in range(repeats)]
    from napari_mirnet.io import chunk_cache

    local_t, s3_t, raw_t, budget = [], [], [], chunk_cache.BUDGET
    for r in range(repeats):  # alternately, so that a busy moment of the machine hits all three
        out = str(tmp / f"out{r}.ome.zarr")
        local_t.append(timed(lambda: nm.restore(str(local_in), weights=weights, out=out, **TILE)))
        url = f"s3://bench/out{r}.ome.zarr"
        s3_t.append(timed(lambda: nm.restore(src_url, weights=weights, out=url, storage_options=options, **TILE)))
        chunk_cache.BUDGET = 0  # the same run with every tile fetching its chunks itself
        try:
            url = f"s3://bench/raw{r}.ome.zarr"
            raw_t.append(timed(lambda: nm.restore(src_url, weights=weights, out=url, storage_options=options, **TILE)))
        finally:
            chunk_cache.BUDGET = budget
    same = np.array_equal(level0(str(tmp / "out0.ome.zarr")), level0("s3://bench/out0.ome.zarr", options))
    chunks = zarr.open_group(str(tmp / "out0.ome.zarr"), mode="r")["0"].nchunks
    print(f"output: OME-Zarr with its pyramid, {chunks} level-0 chunks; s3 output == local output: {same}")
    print(f"{'run':<28}{'best s':>9}{'MB/s':>9}{'chunks/s':>10}{'storage s':>11}   all runs (s)")
    t_mem = min(mem_t)
    for name, ts in (
        ("in memory (numpy->numpy)", mem_t),
        ("local disk -> local disk", local_t),
        ("s3 -> s3 (moto)", s3_t),
        ("s3 -> s3, no chunk cache", raw_t),
    ):
        t = min(ts)
        extra = "" if name.startswith("in memory") else f"{t - t_mem:>11.1f}"
        runs = ", ".join(f"{x:.1f}" for x in ts)
        print(f"{name:<28}{t:>9.1f}{img.nbytes / MB / t:>9.2f}{chunks / t:>10.2f}{extra:>11}   {runs}")
    ratio = min(local_t) / min(s3_t)
    print(f"throughput ratio s3/local (best runs, same process): {ratio:.2f}")
    print(f"throughput ratio s3 with / without the chunk cache: {min(raw_t) / min(s3_t):.2f}")
    # the tiles read level 0 only: its stored bytes are what one read of the input costs
    level0_stored = sum(f.stat().st_size for f in (local_in / "0").rglob("*") if f.is_file())
    counted(src_url, options, weights, level0_stored, zarr.open_group(str(local_in), mode="r")["0"].chunks)


def counted(src_url: str, options: dict, weights: str, stored: int, chunks: tuple) -> None:
    """One more s3 -> s3 run through the tests' counting proxy: bytes fetched and sent, against the stored input."""
    from test_cluster_remote import _proxy

    from napari_mirnet.io import chunk_cache

    endpoint = options["client_kwargs"]["endpoint_url"]
    server, url, counts = _proxy(endpoint)
    proxied = {**options, "client_kwargs": {**options["client_kwargs"], "endpoint_url": url}}
    got = {}
    try:
        for budget in (0, chunk_cache.BUDGET):  # without the cache, then with it
            before, chunk_cache.BUDGET = chunk_cache.BUDGET, budget
            chunk_cache.clear()
            try:
                out = f"s3://bench/counted{budget}.ome.zarr"
                nm.restore(src_url, weights=weights, out=out, storage_options=proxied, **TILE)
            finally:
                chunk_cache.BUDGET = before
            got[budget] = sum(n for (m, p), n in counts.items() if m == "GET" and p.startswith("/bench/in.ome.zarr/"))
            got[budget] -= sum(v for k, v in got.items() if k != budget)
    finally:
        server.shutdown()
        server.server_close()
    print(f"without the chunk cache the same run read {got[0] / MB:.1f} MB = {got[0] / stored:.1f}x level 0 as stored")
    got = got[chunk_cache.BUDGET]
    sent = sum(n for (m, p), n in counts.items() if m == "PUT")
    calls = Counter(m for m, _ in counts)
    print(
        f"s3 traffic of one run (counting proxy): input read {got / MB:.1f} MB = {got / stored:.2f}x level 0 "
        f"as stored (chunks {'x'.join(map(str, chunks))}, each fetched once by the tiles that share it: io.chunk_cache, "
        f"{chunk_cache.BUDGET // MB} MB); "
        f"written {sent / MB / 2:.1f} MB per run; requests of the two runs {dict(calls)}"
    )


def _tile_bytes(path: Path, window: tuple, level: int) -> tuple[int, int]:
    """Compressed bytes of the full-resolution tiles a window (y0, y1, x0, x1) touches, and of overview ``level``."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        th, tw = page.tilelength, page.tilewidth
        nx = -(-page.imagewidth // tw)
        y0, y1, x0, x1 = window
        idx = [ty * nx + tx for ty in range(y0 // th, -(-y1 // th)) for tx in range(x0 // tw, -(-x1 // tw))]
        return sum(page.databytecounts[i] for i in idx), sum(tif.pages[level].databytecounts)


def cog_bytes(tmp: Path, size: int) -> None:
    import rasterio
    from rasterio.transform import from_origin
    from servers import serve_folder

    folder = tmp / "http"
    folder.mkdir()
    plain = tmp / "plain.tif"
    data = (np.random.default_rng(1).normal(1000, 200, (size, size))).astype(np.uint16)
    profile = dict(driver="GTiff", width=size, height=size, count=1, dtype="uint16", crs="EPSG:32633")
    profile["transform"] = from_origin(500000, 4000000, 10, 10)
    with rasterio.open(plain, "w", **profile) as dst:
        dst.write(data, 1)
    with rasterio.open(plain) as src:
        profile = {
            **src.profile,
            "driver": "COG",
            "blocksize": 512,
            "compress": "deflate",
            "overview_resampling": "average",
        }
        with rasterio.open(
            folder / "scene.tif",
            "w",
            **{k: v for k, v in profile.items() if k not in ("blockxsize", "blockysize", "tiled", "interleave")},
        ) as dst:
            dst.write(src.read())
    file_size = (folder / "scene.tif").stat().st_size
    crop_need, ov_need = _tile_bytes(folder / "scene.tif", (1024, 1536, 1024, 1536), 2)
    server, base, served = serve_folder(folder)
    url = f"{base}/scene.tif"
    try:
        served.clear()
        src = mio.open_image(url)
        opened = sum(served.values())
        crop = np.asarray(src.array[..., 1024:1536, 1024:1536])
        crop_read = sum(served.values()) - opened
        print(f"COG {size}x{size} uint16 over HTTP (Range), deflate, 512x512 tiles: {file_size / MB:.1f} MB file")
        print(f"  open (header, IFDs):           {opened / 1e3:10.1f} kB read")
        print(
            f"  512x512 crop at full res:      {crop_read / 1e3:10.1f} kB read; its tiles hold {crop_need / 1e3:.1f} kB "
            f"({crop.nbytes / 1e3:.1f} kB of pixels); {100 * (opened + crop_read) / file_size:.2f}% of the file with the open"
        )
        served.clear()
        ov = mio.open_image(url, level=2)
        whole = np.asarray(ov.array[...])
        ov_read = sum(served.values())
        print(
            f"  overview level 2 ({'x'.join(map(str, whole.shape))}) read whole: {ov_read / 1e3:10.1f} kB read, "
            f"its tiles hold {ov_need / 1e3:.1f} kB ({whole.nbytes / 1e3:.1f} kB of pixels); "
            f"{100 * ov_read / file_size:.2f}% of the file"
        )
    finally:
        server.shutdown()
        server.server_close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=4096, help="image side (pixels) of the throughput run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cog-size", type=int, default=8192)
    args = parser.parse_args()
    from servers import start_moto_open

    print(f"# benchmarks/remote.py, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print(f"# {platform.node()}: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}; moto server on 127.0.0.1")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        proc, endpoint = start_moto_open(tmp)
        try:
            throughput(tmp, endpoint, args.size, args.repeats)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        cog_bytes(tmp, args.cog_size)
    print(f"# load at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
