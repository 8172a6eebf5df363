"""A dask.distributed cluster with no shared disk: OME-Zarr from s3:// to s3:// (moto) on 2 worker processes.

The scheduler and each worker are subprocesses; each worker runs in its own empty folder (cwd,
``--local-directory``, ``HOME``, ``XDG_CACHE_HOME``), so no weights cache or file is shared with the
client. The workers find the store and its credentials in their own environment (``AWS_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``), as on a cloud cluster; the run passes no storage options.

What travels through the client is measured, not assumed: the client and the workers reach moto
through two counting proxies, and the client must have fetched no byte of an input chunk.
"""

from __future__ import annotations

import http.client
import http.server
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import OPEN_KEY, OPEN_SECRET, SAFETY_S, make_checkpoint

import napari_mirnet as nm
from napari_mirnet import io as mio

distributed = pytest.importorskip("distributed")
pytest.importorskip("s3fs")

ROOT = Path(__file__).resolve().parents[1]
TILED = dict(tile=48, halo=8, blend=4, device="cpu")
#: 64-pixel chunks: level 1 of the pyramid (32-pixel chunks) is written chunk by chunk by the tasks too
PYRAMID = dict(tile=80, halo=8, blend=4, device="cpu")
#: A zarr chunk's key (v3 ``c/0/1/2`` or v2 ``0.1.2``): bookkeeping and metadata are not chunks.
CHUNK = re.compile(r"/(c(/\d+)+|\d+(\.\d+)+)$")


# ----------------------------------------------------------------------------- counting proxy
class _Proxy(http.server.BaseHTTPRequestHandler):
    """Forwards every request to moto; counts per (method, path) the bytes sent (GET) or received (PUT, POST)."""

    target: tuple[str, int]
    counts: Counter
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _forward(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else None
        conn = http.client.HTTPConnection(*self.target, timeout=120)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        # bytes that went the way of the request: a GET's answer, a PUT's or POST's body
        self.counts[(self.command, self.path.split("?")[0])] += len(data) if self.command == "GET" else len(body or b"")
        self.send_response_only(resp.status, resp.reason)
        for k, v in resp.getheaders():
            if k.lower() not in ("connection", "transfer-encoding", "content-length", "keep-alive"):
                self.send_header(k, v)
        # a HEAD answer announces the object's size without sending it
        length = resp.getheader("Content-Length") if self.command == "HEAD" else str(len(data))
        self.send_header("Content-Length", length or "0")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward


def _proxy(endpoint: str):
    """A counting proxy in front of ``endpoint``: (server, its URL, Counter of bytes per (method, path))."""
    host, port = endpoint.removeprefix("http://").split(":")
    counts: Counter = Counter()
    handler = type("P", (_Proxy,), {"target": (host, int(port)), "counts": counts})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", counts


def chunk_bytes(counts: Counter, store_key: str) -> int:
    """Bytes of chunks of the store ``/<bucket>/<store_key>`` read (GET) through a proxy."""
    return sum(n for (m, p), n in counts.items() if m == "GET" and store_key in p and CHUNK.search(p))


# ----------------------------------------------------------------------------- the cluster
def _aws_env(endpoint: str) -> dict:
    return {
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_ACCESS_KEY_ID": OPEN_KEY,
        "AWS_SECRET_ACCESS_KEY": OPEN_SECRET,
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def _wait_for(path: Path, procs: list, what: str) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not path.exists():
        if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def cluster(s3_open, tmp_path_factory):
    """A scheduler and 2 workers, each a subprocess in its own empty folder; the workers reach moto
    through a counting proxy. Yields (scheduler address, worker folders, worker proxy counts)."""
    server, url, counts = _proxy(s3_open)
    base = tmp_path_factory.mktemp("cluster")
    sched_file = base / "scheduler.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "NAPARI_MIRNET_", "DASK_"))}
    env["PYTHONPATH"] = str(ROOT)  # the package's code is installed on every worker; its data is not
    procs, folders = [], []
    scheduler = [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0"]
    procs.append(
        subprocess.Popen(
            [*scheduler, "--no-dashboard", "--scheduler-file", str(sched_file)],
            cwd=base,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=open(base / "scheduler.log", "wb"),  # noqa: SIM115 (the server's life)
        )
    )
    try:
        _wait_for(sched_file, procs, "the dask scheduler")
        for i in range(2):
            home = base / f"worker{i}"
            (home / "work").mkdir(parents=True)
            wenv = {**env, **_aws_env(url), "HOME": str(home), "XDG_CACHE_HOME": str(home / "cache")}
            wenv["OMP_NUM_THREADS"] = "1"
            cmd = [sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(sched_file)]
            cmd += ["--nthreads", "1", "--local-directory", str(home / "dask"), "--no-dashboard"]
            cmd += ["--host", "127.0.0.1", "--name", f"w{i}"]
            log = open(base / f"worker{i}.log", "wb")  # noqa: SIM115 (the worker's life)
            procs.append(subprocess.Popen(cmd, cwd=home / "work", env=wenv, stdout=log, stderr=log))
            folders.append(home)
        with distributed.Client(scheduler_file=str(sched_file), timeout="60s") as c:
            c.wait_for_workers(2, timeout=SAFETY_S)
            address = c.scheduler.address
        yield address, folders, counts
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        server.shutdown()
        server.server_close()


@pytest.fixture
def client_env(s3_open, monkeypatch):
    """This process (the client) reaches moto through its own counting proxy, with credentials from
    the environment; yields its counts."""
    import s3fs

    server, url, counts = _proxy(s3_open)
    for k, v in _aws_env(url).items():
        monkeypatch.setenv(k, v)
    # s3fs reuses filesystems by their arguments, not the environment: none made before may answer
    s3fs.S3FileSystem.clear_instance_cache()
    yield counts
    s3fs.S3FileSystem.clear_instance_cache()
    server.shutdown()
    server.server_close()


@pytest.fixture
def one_thread():
    """The workers' torch thread count (OMP_NUM_THREADS=1): CPU results are bit-identical for equal counts."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ----------------------------------------------------------------------------- helpers
def upload_folder(s3c, bucket: str, folder: Path, prefix: str) -> None:
    """Put every file under ``folder`` at ``prefix/<relative path>`` (boto3 put_object)."""
    for f in sorted(folder.rglob("*")):
        if f.is_file():
            s3c.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(folder).as_posix()}", Body=f.read_bytes())


def levels(url_or_path: str) -> list[np.ndarray]:
    """Every level of an OME-Zarr's first multiscale, read in full (remote: credentials from the environment)."""
    import zarr

    group = zarr.open_group(url_or_path, mode="r")
    attrs = group.attrs.asdict()
    ms = attrs.get("ome", attrs)["multiscales"][0]
    return [np.asarray(group[d["path"]][...]) for d in ms["datasets"]]


def assert_same_levels(got: str, want: str) -> None:
    a, b = levels(got), levels(want)
    assert len(a) == len(b) >= 1
    for k, (x, y) in enumerate(zip(a, b)):
        assert x.dtype == y.dtype and x.shape == y.shape, k
        assert np.array_equal(x, y), f"level {k}: max |difference| {np.abs(x.astype(float) - y).max()}"


def validate_ome(url: str) -> None:
    """ome-zarr-models validates the store and ome-zarr-py reads it, both from the URL."""
    import zarr
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Multiscales, Reader
    from ome_zarr_models import open_ome_zarr

    open_ome_zarr(zarr.open_group(url, mode="r"))
    nodes = [n for n in Reader(parse_url(url))() if n.specs and isinstance(n.specs[0], Multiscales)]
    assert nodes and np.asarray(nodes[0].data[-1]).size > 0


def worker_files(address: str) -> dict:
    """Per worker: its cwd, and the files in its weights cache (its own HOME/XDG_CACHE_HOME)."""

    def look():
        from napari_mirnet.weights.catalogue import cache_dir

        d = cache_dir()
        return os.getcwd(), sorted(p.name for p in d.iterdir()) if d.is_dir() else [], str(d)

    with distributed.Client(address) as c:
        return c.run(look)


# ----------------------------------------------------------------------------- tests
@pytest.mark.slow
def test_s3_to_s3_on_a_cluster_without_shared_disk(cluster, client_env, s3_bucket, tmp_path, one_thread, monkeypatch):
    address, folders, worker_counts = cluster
    s3c, bucket = s3_bucket.client(), s3_bucket.bucket
    # past 512 pixels, so that the output has a pyramid: level 1 (32-pixel chunks) is written chunk by
    # chunk by the tasks, like level 0; a smaller model than tiny_weights keeps the run short
    tiny_weights = make_checkpoint(tmp_path / "small.pth", n_feat=4, chan_factor=2.0)
    img = np.random.default_rng(7).integers(0, 65535, (600, 560), dtype=np.uint16)
    local_in = mio.write_image(tmp_path / "in.ome.zarr", img, "YX")
    upload_folder(s3c, bucket, Path(local_in), "in.ome.zarr")
    s3c.put_object(Bucket=bucket, Key="models/tiny.pth", Body=Path(tiny_weights).read_bytes())
    weights_url = f"s3://{bucket}/models/tiny.pth"
    monkeypatch.chdir(tmp_path)

    local_out = str(tmp_path / "local.ome.zarr")
    nm.restore(str(local_in), weights=tiny_weights, out=local_out, **PYRAMID)

    # a fresh run: the workers read the input's chunks, the client none
    out = s3_bucket.url("out.ome.zarr")
    nm.restore(s3_bucket.url("in.ome.zarr"), weights=weights_url, out=out, client=address, **PYRAMID)
    run_counts = client_env.copy()  # before this process reads the output to check it
    assert chunk_bytes(worker_counts, f"/{bucket}/in.ome.zarr/") > 0
    assert chunk_bytes(run_counts, f"/{bucket}/in.ome.zarr/") == 0, "the client read input chunks"
    put = [p for (m, p), n in run_counts.items() if m == "PUT" and CHUNK.search(p)]
    assert not put, f"the client wrote chunks: {put[:3]}"
    read = [p for (m, p), n in run_counts.items() if m == "GET" and CHUNK.search(p) and "/out.ome.zarr/" in p]
    # the client reads the smallest level only (<= 512 pixels a side: io.store finalize's display windows)
    assert read and all(p.split("/out.ome.zarr/")[1].startswith("1/") for p in read), read[:3]
    assert mio.is_complete(out)
    assert_same_levels(out, local_out)
    assert len(levels(out)) == 2  # a pyramid
    validate_ome(out)

    # each worker downloaded the weights once into its own cache, in its own folder
    seen = worker_files(address)
    assert len(seen) == 2 and len({cwd for cwd, _, _ in seen.values()}) == 2
    for cwd, cached, cache in seen.values():
        assert any(cache.startswith(str(f)) and cwd.startswith(str(f)) for f in folders)
        assert [n for n in cached if n.endswith(".pth")] and [n for n in cached if n.endswith(".sha256")]

    # cancelled midway, then resumed: bit-identical to the local run
    out2 = s3_bucket.url("resumed.ome.zarr")
    cancel = threading.Event()

    def stop_after_some(p):
        if p.done >= 4:
            cancel.set()

    with pytest.raises(nm.engine.Cancelled):
        nm.restore(
            s3_bucket.url("in.ome.zarr"),
            weights=weights_url,
            out=out2,
            client=address,
            progress=stop_after_some,
            cancel=cancel,
            **PYRAMID,
        )
    assert not mio.is_complete(out2)
    done = mio.done_markers(out2)
    assert 0 < done.sum() < done.size
    before = client_env.copy()
    nm.restore(s3_bucket.url("in.ome.zarr"), weights=weights_url, out=out2, client=address, **PYRAMID)
    assert mio.is_complete(out2)
    assert_same_levels(out2, local_out)
    # the downloads were not repeated: the same cached files
    assert worker_files(address) == seen
    resumed_reads = chunk_bytes(client_env - before, f"/{bucket}/in.ome.zarr/")
    assert resumed_reads == 0, f"resuming, the client read {resumed_reads} bytes of input chunks"


#: The client of the killed run: a short lease (so that the rerun need not wait 2 minutes for it to
#: go stale), progress printed as it comes, killed by the test with SIGKILL (no clean-up runs).
KILLED_CLIENT = """
import sys
import napari_mirnet.io.lease as lease
lease.TTL_S = 3.0
import napari_mirnet as nm
src, weights, out, address = sys.argv[1:5]
nm.restore(src, weights=weights, out=out, client=address, tile=48, halo=8, blend=4, device="cpu",
           progress=lambda p: print("done", p.done, flush=True))
"""


@pytest.mark.slow
def test_killed_client_resumes_bit_identical(
    cluster, s3_open, s3_bucket, tiny_weights, tmp_path, one_thread, monkeypatch
):
    address = cluster[0]
    s3c, bucket = s3_bucket.client(), s3_bucket.bucket
    img = np.random.default_rng(8).integers(0, 255, (130, 200, 3), dtype=np.uint8)
    local_in = mio.write_image(tmp_path / "in.ome.zarr", img, "YXC")
    upload_folder(s3c, bucket, Path(local_in), "in.ome.zarr")
    s3c.put_object(Bucket=bucket, Key="models/tiny.pth", Body=Path(tiny_weights).read_bytes())
    local_out = str(tmp_path / "local.ome.zarr")
    nm.restore(str(local_in), weights=tiny_weights, out=local_out, **TILED)

    env = {**os.environ, **_aws_env(s3_open), "PYTHONPATH": str(ROOT), "NAPARI_MIRNET_CACHE": str(tmp_path / "cache")}
    src, out, weights = s3_bucket.url("in.ome.zarr"), s3_bucket.url("out.ome.zarr"), f"s3://{bucket}/models/tiny.pth"
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_CLIENT, src, weights, out, address], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        for line in proc.stdout:  # killed once some chunks are written, many before the last
            if line.startswith("done") and int(line.split()[1]) >= 3:
                break
    finally:
        proc.kill()
        proc.wait(timeout=SAFETY_S)
    for k, v in _aws_env(s3_open).items():
        monkeypatch.setenv(k, v)
    time.sleep(4)  # the killed run's lease (3 s) has expired: the rerun takes it over
    done = mio.done_markers(out)
    assert not mio.is_complete(out) and 0 < done.sum() < done.size
    nm.restore(src, weights=weights, out=out, client=address, **TILED)
    assert mio.is_complete(out)
    assert_same_levels(out, local_out)
    validate_ome(out)


def test_weights_only_the_client_has_are_refused(cluster, tiny_weights, tmp_path, monkeypatch):
    """A relative weights path that exists in the client's folder only: refused with the URL advice."""
    import shutil

    from napari_mirnet.weights import WeightsError
    from napari_mirnet.weights.download import check_workers_see

    address = cluster[0]
    monkeypatch.chdir(tmp_path)
    shutil.copy(tiny_weights, tmp_path / "mine.pth")
    with distributed.Client(address) as client:
        with pytest.raises(WeightsError, match=r"not on worker\(s\) .*put the weights at a URL"):
            check_workers_see("mine.pth", client)
        check_workers_see("small-denoise-gray", client)  # shipped: inside each worker's package
        check_workers_see(tiny_weights, client)  # an absolute path every worker sees (one machine here)
        img = np.random.default_rng(1).integers(0, 255, (60, 70), dtype=np.uint8)
        # restore checks the workers when it plans the run: refused before the output exists
        with pytest.raises(WeightsError, match=r"mine\.pth is not on worker\(s\) .*put the weights at a URL"):
            nm.restore(img, weights="mine.pth", client=client, out=str(tmp_path / "o.zarr"), **TILED)
        assert not (tmp_path / "o.zarr").exists()


def test_ome_zarr_v04_over_http(http_folder, tiny_weights, tmp_path):
    """An OME-Zarr v0.4 in zarr v2 (as IDR publishes over HTTPS) restores from its URL like its local copy."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    folder, base, served = http_folder
    img = np.random.default_rng(3).integers(0, 255, (2, 3, 64, 80), dtype=np.uint8)
    group = zarr.open_group(str(folder / "v04.zarr"), mode="w", zarr_format=2)
    write_image(img, group, axes="czyx", fmt=FormatV04(), scaler=None)
    opts = dict(tile=48, halo=8, blend=4, device="cpu")
    nm.restore(f"{base}/v04.zarr", weights=tiny_weights, out=str(tmp_path / "url.ome.zarr"), **opts)
    nm.restore(str(folder / "v04.zarr"), weights=tiny_weights, out=str(tmp_path / "local.ome.zarr"), **opts)
    assert_same_levels(str(tmp_path / "url.ome.zarr"), str(tmp_path / "local.ome.zarr"))
    assert served["/v04.zarr/s0/0/0/0/0"] > 0


def test_tasks_refuse_weights_other_than_the_runs(tiny_weights):
    """A task carries the SHA-256 the run was prepared with: weights a worker got otherwise (a URL whose
    object changed since, another file at the same path) are refused, not mixed into the output."""
    from napari_mirnet.engine import prepare, steps
    from napari_mirnet.weights import WeightsError

    img = np.random.default_rng(2).integers(0, 255, (40, 50, 3), dtype=np.uint8)
    run = prepare(img, weights=tiny_weights, options=nm.engine.RestoreOptions(**TILED))
    ctx = run.context()
    ctx.weights_sha256 = run.weights_sha256
    assert steps.restore_tiles(ctx, run.keys[:1], [])
    ctx.weights_sha256 = "0" * 64
    with pytest.raises(WeightsError, match="SHA-256"):
        steps.restore_tiles(ctx, run.keys[:1], [])


@pytest.mark.slow
def test_cli_scheduler_s3_to_s3(cluster, client_env, s3_bucket, tmp_path, one_thread, monkeypatch):
    """``napari-mirnet restore s3://... -o s3://... --scheduler ADDRESS``: the same run as the API's,
    through the command, reading no input chunk in the client."""
    from napari_mirnet.cli import main

    address = cluster[0]
    s3c, bucket = s3_bucket.client(), s3_bucket.bucket
    weights = make_checkpoint(tmp_path / "small.pth", n_feat=4, chan_factor=2.0)
    img = np.random.default_rng(11).integers(0, 255, (120, 100), dtype=np.uint8)
    local_in = mio.write_image(tmp_path / "in.ome.zarr", img, "YX")
    upload_folder(s3c, bucket, Path(local_in), "in.ome.zarr")
    s3c.put_object(Bucket=bucket, Key="tiny.pth", Body=Path(weights).read_bytes())
    monkeypatch.chdir(tmp_path)
    local_out = str(tmp_path / "local.ome.zarr")
    nm.restore(str(local_in), weights=weights, out=local_out, **TILED)

    before = client_env.copy()
    out = s3_bucket.url("cli.ome.zarr")
    flags = ["--tile", "48", "--halo", "8", "--blend", "4", "--device", "cpu", "-q"]
    args = ["restore", s3_bucket.url("in.ome.zarr"), "-o", out, "--weights", f"s3://{bucket}/tiny.pth", *flags]
    assert main([*args, "--scheduler", address]) == 0
    assert mio.is_complete(out)
    assert_same_levels(out, local_out)
    assert chunk_bytes(client_env - before, f"/{bucket}/in.ome.zarr/") == 0
    assert main([*args, "--scheduler", address]) == 0  # a rerun finds it complete: skipped
