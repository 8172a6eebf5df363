"""OME-Zarr outputs on object storage (issue 32, build point 2): written, resumed and leased at s3:// URLs.

Against moto's S3 server on 127.0.0.1 started WITHOUT signature checks (``s3_open``): moto 5.2.1
miscomputes the signature of every listing whose prefix holds "/", and writing, resuming and removing
a store list; only the wrong-secret test uses the server that checks signatures (``s3_server``).
"""

from __future__ import annotations

import json
import os
import threading
import time

import numpy as np
import pytest
import zarr

from napari_mirnet import engine
from napari_mirnet import io as mio
from napari_mirnet.io import lease as lease_mod
from napari_mirnet.io import omezarr

pytest.importorskip("s3fs")
pytest.importorskip("moto.server")

RNG = np.random.default_rng(32)
# 64-pixel cores: level 1 is written chunk by chunk (32-pixel chunks), level 2 when the run finishes
OPTS = engine.RestoreOptions(tile=80, halo=8, blend=4, device="cpu")
SECRET = "s3cr3t-never-shown"


def _options(endpoint: str) -> dict:
    return {
        "key": "tester",
        "secret": SECRET,
        "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"},
    }


_BUCKETS = iter(range(10**6))


@pytest.fixture
def bucket(s3_open):
    """A new bucket for this test: (bucket name, storage options, boto3 client)."""
    import boto3

    c = boto3.client(
        "s3", endpoint_url=s3_open, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    name = f"out{next(_BUCKETS)}-{os.getpid()}"
    c.create_bucket(Bucket=name)
    return name, _options(s3_open), c


@pytest.fixture
def small_pyramids(monkeypatch):
    monkeypatch.setattr(omezarr, "PYRAMID_MIN", 64)


def _keys(c, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in c.list_objects_v2(Bucket=bucket).get("Contents", []))


def _run(img, weights):
    return engine.prepare(img, weights=weights, options=OPTS)


def _stop_after(n: int):
    cancel = threading.Event()

    def progress(done, total):
        if done >= n:
            cancel.set()

    return cancel, progress


def _attrs_without_token(group) -> dict:
    attrs = json.loads(json.dumps(dict(group.attrs)))
    attrs[mio.ATTR].pop("token", None)
    return attrs


# --------------------------------------------------------------------------------- a whole run
@pytest.mark.slow
def test_s3_store_equals_the_local_one_and_every_reader_takes_it(tiny_weights, tmp_path, bucket, small_pyramids):
    name, opts, c = bucket
    img = RNG.integers(0, 256, (150, 140, 3), dtype=np.uint8)
    url, local = f"s3://{name}/r.zarr", tmp_path / "r.zarr"
    res = engine.execute(_run(img, tiny_weights), out=url, storage_options=opts)
    engine.execute(_run(img, tiny_weights), out=local)
    remote_g = zarr.open_group(url, mode="r", storage_options=opts)
    local_g = zarr.open_group(str(local), mode="r")
    assert sorted(remote_g.array_keys()) == sorted(local_g.array_keys()) == ["0", "1", "2"]
    for k in "012":
        a, b = remote_g[k][...], local_g[k][...]
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.abs(a.astype(np.int64) - b.astype(np.int64)).max() == 0
        assert dict(remote_g[k].attrs) == dict(local_g[k].attrs)
    assert _attrs_without_token(remote_g) == _attrs_without_token(local_g)
    np.testing.assert_array_equal(np.moveaxis(np.asarray(res), -1, 0), local_g["0"][...])  # read back from the URL
    assert mio.is_complete(url, opts) and mio.stored_fingerprint(url, opts) == mio.stored_fingerprint(local)
    # only the image is left: no bookkeeping, no lease
    keys = _keys(c, name)
    assert all(k.startswith("r.zarr/") for k in keys), keys
    for k in (k for k in keys if k.endswith("zarr.json")):  # no credential in the metadata
        assert SECRET.encode() not in c.get_object(Bucket=name, Key=k)["Body"].read()

    from ome_zarr.io import ZarrLocation
    from ome_zarr.reader import Reader
    from ome_zarr_models.v05.image import Image

    Image.from_zarr(remote_g)  # ome-zarr-models validates the store at the URL
    store = zarr.storage.FsspecStore.from_url(url, storage_options=opts, read_only=True)
    node = next(iter(Reader(ZarrLocation(store))()))
    assert [tuple(d.shape) for d in node.data] == [local_g[k].shape for k in "012"]
    np.testing.assert_array_equal(np.asarray(node.data[1]), local_g["1"][...])


# ------------------------------------------------------------------------------------ resume
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_store_and_leaves_no_bookkeeping(tiny_weights, tmp_path, bucket):
    name, opts, c = bucket
    img = RNG.integers(0, 256, (150, 150, 3), dtype=np.uint8)
    url = f"s3://{name}/k.zarr"
    cancel, stop = _stop_after(4)  # with blending a chunk needs its neighbours' tiles first
    with pytest.raises(engine.Cancelled):
        engine.execute(_run(img, tiny_weights), out=url, storage_options=opts, cancel=cancel, progress=stop)
    assert not mio.is_complete(url, opts)
    done = mio.done_markers(url, opts)
    assert 0 < done.sum() < done.size
    keys = _keys(c, name)
    assert any(k.startswith(".k.zarr.mirnet/mirnet_done/c/") for k in keys)  # objects beside the store
    assert ".k.zarr.lock" not in keys  # the lease goes with the run, also on cancel
    with pytest.raises(mio.FingerprintMismatch, match=r"other settings.*tile"):
        engine.execute(
            engine.prepare(img, weights=tiny_weights, options=engine.RestoreOptions(tile=64, halo=8, device="cpu")),
            out=url,
            storage_options=opts,
        )
    seen = []
    engine.execute(_run(img, tiny_weights), out=url, storage_options=opts, progress=lambda d, t: seen.append(t))
    assert seen[-1] == done.size - done.sum()  # only the unfinished chunks ran
    fresh = tmp_path / "f.zarr"
    engine.execute(_run(img, tiny_weights), out=fresh)
    a, b = zarr.open_group(url, mode="r", storage_options=opts), zarr.open_group(str(fresh), mode="r")
    for k in sorted(b.array_keys()):
        np.testing.assert_array_equal(a[k][...], b[k][...])
    assert all(k.startswith("k.zarr/") for k in _keys(c, name))
    with pytest.raises(mio.OutputExistsError, match="already complete"):
        engine.execute(_run(img, tiny_weights), out=url, storage_options=opts)


def test_objects_not_ours_are_left_alone(tiny_weights, bucket):
    name, opts, c = bucket
    c.put_object(Bucket=name, Key="mine.zarr/notes.txt", Body=b"keep me")
    c.put_object(Bucket=name, Key="plain.zarr", Body=b"an object, not a store")
    img = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    for overwrite in (False, True):
        with pytest.raises(mio.OutputError, match=r"s3://.*/mine\.zarr exists and is not a napari-mirnet result"):
            engine.execute(
                _run(img, tiny_weights), out=f"s3://{name}/mine.zarr", storage_options=opts, overwrite=overwrite
            )
    with pytest.raises(mio.OutputError, match="existing object, not a zarr store"):
        engine.execute(_run(img, tiny_weights), out=f"s3://{name}/plain.zarr", storage_options=opts)
    assert c.get_object(Bucket=name, Key="mine.zarr/notes.txt")["Body"].read() == b"keep me"


# ------------------------------------------------------------------------------------- lease
def test_a_second_writer_is_refused_by_the_lease(tiny_weights, bucket):
    name, opts, c = bucket
    url = f"s3://{name}/two.zarr"
    img = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with mio.store_lock(url, opts):
        assert ".two.zarr.lock" in _keys(c, name)
        with pytest.raises(mio.StoreLocked, match=r"being written by another run \(pid \d+ on .+, since ") as info:
            engine.execute(_run(img, tiny_weights), out=url, storage_options=opts)
        assert SECRET not in str(info.value) and "s3://" in str(info.value)
        assert not [k for k in _keys(c, name) if k.startswith("two.zarr")]  # refused before any write
    assert ".two.zarr.lock" not in _keys(c, name)
    engine.execute(_run(img, tiny_weights), out=url, storage_options=opts)
    assert mio.is_complete(url, opts)


def test_a_stale_lease_is_taken_over(tiny_weights, bucket):
    name, opts, c = bucket
    record = {"holder": "pid 4242 on gone-host, since 2020-01-01 00:00:00", "expires": time.time() - 1, "token": "x"}
    c.put_object(Bucket=name, Key=".st.zarr.lock", Body=json.dumps(record).encode())
    img = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    engine.execute(_run(img, tiny_weights), out=f"s3://{name}/st.zarr", storage_options=opts)
    assert mio.is_complete(f"s3://{name}/st.zarr", opts) and ".st.zarr.lock" not in _keys(c, name)


def test_a_lease_is_renewed_while_its_run_lasts(bucket, monkeypatch):
    name, opts, c = bucket
    url = f"s3://{name}/long.zarr"
    monkeypatch.setattr(lease_mod, "TTL_S", 1.0)
    with mio.store_lock(url, opts) as held:
        first = json.loads(c.get_object(Bucket=name, Key=".long.zarr.lock")["Body"].read())
        time.sleep(1.6)  # past the first expiry: only renewals keep it
        later = json.loads(c.get_object(Bucket=name, Key=".long.zarr.lock")["Body"].read())
        assert later["expires"] > first["expires"] and later["token"] == first["token"]
        with pytest.raises(mio.StoreLocked):
            mio.store_lock(url, opts).acquire()
        held.check()  # still ours
    assert ".long.zarr.lock" not in _keys(c, name)


def test_a_store_without_conditional_puts_is_refused_or_opted_out():
    with pytest.raises(mio.OutputError, match=r"gs://b/x\.zarr.*conditional put.*lease=False"):
        mio.store_lock("gs://b/x.zarr").acquire()
    with mio.store_lock("gs://b/x.zarr", lease=False) as held:
        held.check()


# ------------------------------------------------------------------------------ failures
def test_http_and_bucket_roots_are_refused_before_any_work():
    with pytest.raises(mio.OutputError, match=r"https:// URLs cannot be written.*s3://"):
        engine.check_zarr_out("https://user:pw@example.org/out.zarr")
    with pytest.raises(mio.OutputError, match="name a store inside the bucket"):
        engine.check_zarr_out("s3://bucket")
    with pytest.raises(mio.OutputError, match=r"must end in \.zarr"):
        engine.check_zarr_out("s3://bucket/out.tif")
    engine.check_zarr_out("s3://bucket/out.zarr")
    engine.check_zarr_out("gs://bucket/a/out.zarr/")


def test_outputs_over_inputs_are_refused_by_url_without_requests():
    mio.check_distinct(["s3://b/in.zarr", "/data/out.zarr"], "s3://b/out.zarr")
    mio.check_distinct(["s3://b/x.zarr"], "s3://c/x.zarr")  # another bucket
    mio.check_distinct(["s3://b/x.zarr2"], "s3://b/x.zarr")
    for inp, out, why in [
        ("s3://b/x.zarr", "s3://b//x.zarr/", "is the input"),
        ("https://u:p@Host.org/d/x.zarr?sig=1", "https://host.org/d/./x.zarr", "is the input"),
        ("s3://b/x.zarr/0", "s3://b/x.zarr", "holds the input"),
        ("s3://b/x.zarr", "s3://b/x.zarr/sub/out.zarr", "lies inside the input"),
    ]:
        with pytest.raises(mio.OutputError, match=why) as info:
            mio.check_distinct([inp], out)
        assert "u:p" not in str(info.value)


def test_a_lost_connection_mid_run_names_the_url_and_leaves_it_resumable(tiny_weights, tmp_path):
    from servers import start_moto_open

    proc, endpoint = start_moto_open(tmp_path)
    try:
        import boto3

        boto3.client(
            "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
        ).create_bucket(Bucket="gone")
        opts = {**_options(endpoint), "config_kwargs": {"retries": {"max_attempts": 1}}}
        img = RNG.integers(0, 256, (150, 150, 3), dtype=np.uint8)

        def kill(done, total):
            if done >= 2 and proc.poll() is None:
                proc.kill()
                proc.wait()

        with pytest.raises(mio.OutputError, match=r"writing s3://gone/lost\.zarr failed.*resumable") as info:
            engine.execute(_run(img, tiny_weights), out="s3://gone/lost.zarr", storage_options=opts, progress=kill)
        assert SECRET not in str(info.value)
    finally:
        proc.kill()
        proc.wait()


def test_a_wrong_secret_is_refused_before_any_work_without_showing_it(tiny_weights, s3_server):
    import boto3

    endpoint, key, secret = s3_server
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=secret
    ).create_bucket(Bucket="locked")
    opts = {"key": key, "secret": SECRET, "client_kwargs": {"endpoint_url": endpoint, "region_name": "us-east-1"}}
    img = RNG.integers(0, 256, (40, 40, 3), dtype=np.uint8)
    with pytest.raises(mio.OutputError, match=r"s3://locked/w\.zarr.*credentials") as info:
        engine.execute(_run(img, tiny_weights), out="s3://locked/w.zarr", storage_options=opts)
    assert SECRET not in str(info.value)


def test_a_run_whose_lease_was_taken_over_does_not_complete_the_store(bucket, monkeypatch):
    name, opts, c = bucket
    monkeypatch.setattr(lease_mod, "TTL_S", 0.8)
    held = mio.store_lock(f"s3://{name}/over.zarr", opts)
    with held:
        # another run took the lease over (this one had stalled past its expiry)
        record = {"holder": "pid 7 on other-host, since now", "expires": time.time() + 60, "token": "y"}
        c.put_object(Bucket=name, Key=".over.zarr.lock", Body=json.dumps(record).encode())
        deadline = time.monotonic() + 30
        while not held.lost and time.monotonic() < deadline:
            time.sleep(0.1)
        with pytest.raises(mio.StoreLocked, match="took the store over.*resumable"):
            held.check()
    assert b"other-host" in c.get_object(Bucket=name, Key=".over.zarr.lock")["Body"].read()  # theirs, kept


def test_a_dask_array_read_from_an_s3_store_is_not_overwritten_by_its_own_output(s3_bucket, tiny_weights):
    """A lazy array over s3://b/x.zarr written back to s3://b/x.zarr with overwrite would delete its own pixels."""
    import dask.array as da

    import napari_mirnet as nm

    _, opts = s3_bucket
    url = s3_bucket.url("x.zarr")
    img = np.random.default_rng(0).random((64, 64)).astype(np.float32)
    nm.restore(img, weights=tiny_weights, out=url, storage_options=opts, device="cpu")
    src = mio.open_image(url, storage_options=opts).array
    with pytest.raises(mio.OutputError, match="input") as err:
        nm.restore(
            da.from_array(src, chunks=src.chunks), weights=tiny_weights, out=url, storage_options=opts, overwrite=True
        )
    assert opts["secret"] not in str(err.value)
    assert mio.is_complete(url, storage_options=opts)
