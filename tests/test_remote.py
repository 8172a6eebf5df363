"""Images read from URLs: OME-Zarr over S3 (moto, signatures checked) and HTTP, COG over HTTP with Range."""

from __future__ import annotations

import os

import numpy as np
import pytest

from napari_mirnet.io import open_image
from napari_mirnet.io.urls import is_url, redact

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")


def _image(seed=0, shape=(96, 80, 3)):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 65535, size=shape, dtype=np.uint16)


@pytest.fixture(scope="session")
def local_zarr(tmp_path_factory):
    from napari_mirnet.io import write_image

    p = tmp_path_factory.mktemp("z") / "img.zarr"
    write_image(p, _image(), "YXC")
    return p


def _upload(endpoint, folder, bucket, prefix):
    """Put every file of ``folder`` under ``prefix``, with boto3 (moto 5.2.1 rejects the signature of a
    listing with ``Prefix``/``Delimiter`` when signatures are checked, and s3fs's ``put -r`` lists)."""
    import boto3

    c = boto3.client("s3", endpoint_url=endpoint)
    if bucket not in [b["Name"] for b in c.list_buckets()["Buckets"]]:
        c.create_bucket(Bucket=bucket)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        c.put_object(Bucket=bucket, Key=f"{prefix}/{f.relative_to(folder).as_posix()}", Body=f.read_bytes())


@pytest.fixture
def s3_zarr(s3, local_zarr):
    endpoint, options = s3
    _upload(endpoint, local_zarr, "bucket", "img.zarr")
    return "s3://bucket/img.zarr", options


@pytest.fixture(scope="session")
def http_zarr(http_folder, local_zarr):
    import shutil

    folder, base, _ = http_folder
    shutil.copytree(local_zarr, folder / "img.zarr", dirs_exist_ok=True)
    return f"{base}/img.zarr"


def test_urls_are_told_from_paths_and_redacted():
    assert is_url("s3://b/k.zarr") and is_url("https://h/x.tif") and is_url("gs://b/x")
    assert not is_url("img.zarr") and not is_url("C:/data/x.tif") and not is_url("file:///x")
    assert redact("https://user:pa55word@host:8080/a.zarr?X-Amz-Signature=abc&v=1") == (
        "https://host:8080/a.zarr?X-Amz-Signature=REDACTED&v=1"
    )


def test_s3_zarr_reads_as_local(s3_zarr, local_zarr):
    url, options = s3_zarr
    src = open_image(url, storage_options=options)
    ref = open_image(local_zarr)
    assert src.axes == ref.axes == "CYX"  # OME-Zarr keeps channels first
    np.testing.assert_array_equal(np.asarray(src.array[:]), np.asarray(ref.array[:]))
    assert src.meta.name == ref.meta.name  # the name in the store's own metadata


def test_http_zarr_reads_as_local(http_zarr, local_zarr):
    src = open_image(http_zarr)
    np.testing.assert_array_equal(np.asarray(src.array[:]), np.asarray(open_image(local_zarr).array[:]))


def test_missing_url_names_it_without_credentials(http_folder):
    _, base, _ = http_folder
    secret_url = base.replace("http://", "http://alice:hunter22@") + "/nothing.zarr"
    with pytest.raises(FileNotFoundError) as err:
        open_image(secret_url)
    assert f"{base}/nothing.zarr" in str(err.value) and "hunter22" not in str(err.value)


def test_wrong_secret_is_refused_without_showing_it(s3_zarr, monkeypatch):
    url, options = s3_zarr
    options = {**options, "skip_instance_cache": True}  # s3fs would reuse the instance with the right secret
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong-secret-4711")
    with pytest.raises(PermissionError) as err:
        open_image(url, storage_options=options)
    assert "wrong-secret-4711" not in str(err.value) and url in str(err.value)
    with pytest.raises(PermissionError) as err:
        open_image(
            url, storage_options={**options, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": "other-secret-0815"}
        )
    assert "other-secret-0815" not in str(err.value)


def test_missing_filesystem_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gcsfs" else real(name, *a))
    with pytest.raises(ImportError, match="gcsfs"):
        open_image("gs://bucket/img.zarr")


def test_source_of_a_url_is_named_by_its_redacted_url(http_zarr):
    from napari_mirnet.engine.source import open_source

    secret_url = http_zarr.replace("http://", "http://alice:hunter22@")
    src = open_source(secret_url, None, False, storage_options={})
    assert src.name == http_zarr and src.paths == (http_zarr,)
    assert "hunter22" not in repr(src.name) + repr(src.paths)


def test_open_moto_bucket_lists_and_removes(s3_bucket):
    import s3fs

    endpoint, options = s3_bucket
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    fs.pipe(f"{s3_bucket.bucket}/a/b/c.txt", b"hi")
    assert fs.ls(f"{s3_bucket.bucket}/a/") and fs.find(s3_bucket.bucket)
    fs.rm(f"{s3_bucket.bucket}/a", recursive=True)
    assert not fs.exists(f"{s3_bucket.bucket}/a/b/c.txt")


def test_a_url_input_is_the_same_input_wherever_the_run_starts(http_zarr, tiny_weights, tmp_path, monkeypatch):
    """The fingerprint names a URL input by its redacted URL, not by a path below the current folder
    (a rerun from another folder or machine must resume, not be refused as other settings)."""
    from napari_mirnet import engine

    url = http_zarr.replace("http://", "http://alice:hunter22@")
    prints = []
    for cwd in (tmp_path, tmp_path.parent):
        monkeypatch.chdir(cwd)
        prints.append(engine.prepare(url, weights=tiny_weights).fingerprint["input"])
    assert prints[0] == prints[1] == redact(url)
    assert "hunter22" not in prints[0]


def test_each_input_chunk_at_a_url_is_fetched_about_once(http_folder, tiny_weights, monkeypatch):
    """Tiles smaller than the input's chunks share them: each chunk is fetched once and kept a short
    while (io.chunk_cache), not once per tile window that touches it."""
    import zarr

    import napari_mirnet as nm
    from napari_mirnet.io import chunk_cache

    folder, base, served = http_folder
    data = np.random.default_rng(3).integers(0, 4000, (384, 384)).astype(np.uint16)
    arr = zarr.create_array(str(folder / "big_chunks.zarr"), shape=data.shape, chunks=(192, 192), dtype="u2")
    arr[:] = data
    stored = sum(f.stat().st_size for f in (folder / "big_chunks.zarr").rglob("*") if f.is_file())

    def fetched(budget) -> float:
        monkeypatch.setattr(chunk_cache, "BUDGET", budget)
        chunk_cache.clear()
        before = sum(v for k, v in served.items() if k.startswith("/big_chunks.zarr/"))
        np.asarray(nm.restore(f"{base}/big_chunks.zarr", weights=tiny_weights, tile=64, halo=8, blend=4))
        return (sum(v for k, v in served.items() if k.startswith("/big_chunks.zarr/")) - before) / stored

    without, cached = fetched(0), fetched(64 * 2**20)
    assert without > 3  # every 64-pixel tile window fetched the 192-pixel chunks it touches, whole
    assert cached <= 1.05, cached


def test_reads_through_the_chunk_cache_equal_direct_reads(tmp_path, monkeypatch):
    import zarr

    from napari_mirnet.io import chunk_cache
    from napari_mirnet.io.retry import RetryArray

    data = np.random.default_rng(0).integers(0, 9999, (3, 100, 90)).astype(np.uint16)
    z = zarr.create_array(str(tmp_path / "a.zarr"), shape=data.shape, chunks=(1, 32, 32), dtype="u2")
    z[:] = data
    chunk_cache.clear()
    arr = RetryArray(z, "http://h/a.zarr")
    keys = [np.s_[1, 5:70, 10:89], np.s_[:, :, 31:33], np.s_[..., 3:4], np.s_[2], np.s_[0:3:2], np.s_[-1, 99, :]]
    keys += [np.s_[0, 50:10], np.s_[:, ::7, ::40], np.s_[:, 3::50, 1:90:33]]  # empty; strided (samples)
    for key in keys:
        assert np.array_equal(arr[key], data[key]), key
    assert chunk_cache._size <= data.nbytes  # each chunk kept once
    z[1, 5:70, 10:89] = 0  # the input changed: a chunk older than MAX_AGE is fetched again
    monkeypatch.setattr(chunk_cache, "MAX_AGE", 0.0)
    assert not arr[1, 5:70, 10:89].any()


def test_a_bioformats2raw_root_over_http_reads_as_its_local_copy(http_folder):
    """IDR and the BioImage Archive publish bioformats2raw roots: the first series (as the OME group
    lists them) is the image, at a URL as on disk (one reader for both: io.omezarr.image_of_group)."""
    import zarr
    from ome_zarr.format import FormatV04
    from ome_zarr.writer import write_image

    folder, base, _ = http_folder
    root = folder / "b2r.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=2)
    g.attrs["bioformats2raw.layout"] = 3
    g.require_group("OME").attrs["series"] = ["1", "0"]
    img = np.random.default_rng(5).integers(0, 255, (40, 36), dtype=np.uint8)
    for series, data in (("0", img[:20, :18]), ("1", img)):
        write_image(data, g.require_group(series), axes="yx", fmt=FormatV04(), scale_factors=[2])
    local, remote = open_image(root), open_image(f"{base}/b2r.zarr")
    assert remote.axes == local.axes == "YX" and remote.array.shape == (40, 36)
    np.testing.assert_array_equal(np.asarray(remote.array[...]), img)
    np.testing.assert_array_equal(np.asarray(local.array[...]), img)
