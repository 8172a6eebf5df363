"""URLs through the front ends: restore(..., out=URL), the CLI's --storage-option and URL outputs,
GeoTIFF uploads, http outputs refused, finetune from an http OME-Zarr (real servers on 127.0.0.1)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

import napari_mirnet as nm
from napari_mirnet import io as mio
from napari_mirnet.cli import main
from napari_mirnet.cli.common import UsageError, parse_storage_options

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

DATA = Path(__file__).parent / "data" / "geotiff"
TILED = dict(tile=48, halo=8, blend=4, device="cpu")
SECRET = "s3cr3t-Value-That-Must-Not-Show"


def _image(seed=0, shape=(64, 56, 3)):
    return np.random.default_rng(seed).integers(0, 65535, size=shape, dtype=np.uint16)


@pytest.fixture(scope="module")
def s3w(s3_open):
    """The open moto server (no signature checks: listing works, which writing, resuming and removing
    stores need) with a bucket; (endpoint, storage_options carrying a key and SECRET)."""
    _s3(s3_open).create_bucket(Bucket="bucket")
    return s3_open, {"client_kwargs": {"endpoint_url": s3_open, "region_name": "us-east-1"}, "key": "k",
                     "secret": SECRET}  # fmt: skip


def _s3(endpoint):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="k",
                        aws_secret_access_key=SECRET)  # fmt: skip


def _upload(endpoint, folder: Path, prefix: str) -> str:
    c = _s3(endpoint)
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        c.put_object(Bucket="bucket", Key=f"{prefix}/{f.relative_to(folder).as_posix()}", Body=f.read_bytes())
    return f"s3://bucket/{prefix}"


def _objects(endpoint, prefix: str) -> dict[str, bytes]:
    c = _s3(endpoint)
    keys = [o["Key"] for o in c.list_objects_v2(Bucket="bucket", Prefix=prefix).get("Contents", [])]
    return {k: c.get_object(Bucket="bucket", Key=k)["Body"].read() for k in keys}


@pytest.fixture(scope="module")
def local_zarr(tmp_path_factory):
    p = tmp_path_factory.mktemp("z") / "img.zarr"
    mio.write_image(p, _image(), "YXC")
    return p


def _store_array(url_or_path, options=None) -> np.ndarray:
    import zarr

    return np.asarray(zarr.open_group(str(url_or_path), mode="r", storage_options=options)["0"][:])


# ------------------------------------------------------------------------------ --storage-option
def test_storage_option_parsing_and_its_usage_errors(capsys):
    got = parse_storage_options(
        ["client_kwargs.endpoint_url=http://h:9000", "anon=true", "n=3", "secret=abc=d", 'cfg={"a": 1}']
    )
    assert got == {"client_kwargs": {"endpoint_url": "http://h:9000"}, "anon": True, "n": 3, "secret": "abc=d",
                   "cfg": {"a": 1}}  # fmt: skip
    assert parse_storage_options([]) is None
    for bad in ("novalue", "=x", "a..b=1", ".a=1"):
        with pytest.raises(UsageError, match="--storage-option"):
            parse_storage_options([bad])
    with pytest.raises(UsageError, match="both"):
        parse_storage_options(["a=1", "a.b=2"])
    # through the command: a usage error (exit 2) that names the flag, for restore and finetune
    for cmd in (["restore", "x.zarr", "-o", "y.zarr"], ["finetune", "x.zarr", "-o", "m.pth"]):
        assert main([*cmd, "--storage-option", "oops"]) == 2
        err = capsys.readouterr().err  # the item is not repeated: without '=' it may be a secret
        assert "--storage-option is not KEY=VALUE" in err and "oops" not in err


def test_http_output_is_refused_before_any_work(local_zarr, tmp_path, capsys):
    # the CLI: a usage error at planning, before the model loads (no weights named here exist)
    args = ["restore", str(local_zarr), "-o", "http://127.0.0.1:9/out.zarr", "--weights", "no-such-model", "-q"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "http(s):// URL cannot be written" in err and "s3://" in err
    # the API: refused by out= before the model is looked for
    with pytest.raises(mio.OutputError, match=r"out='https://h/o.tif': an http\(s\):// URL cannot be written") as e:
        nm.restore(local_zarr, weights="no-such-model", out="https://user:pw@h/o.tif")
    assert "pw" not in str(e.value)
    with pytest.raises(ValueError, match="qc= with out="):
        nm.restore(local_zarr, weights="no-such-model", out="s3://bucket/o.zarr", qc=True)
    assert main(["finetune", str(local_zarr), "-o", "s3://bucket/m.pth"]) == 2
    assert "local path" in capsys.readouterr().err


# --------------------------------------------------------------------------- OME-Zarr to s3
def test_api_restores_s3_zarr_into_s3_zarr_as_locally(s3w, local_zarr, tiny_weights, tmp_path):
    endpoint, options = s3w
    url = _upload(endpoint, local_zarr, "api/in.zarr")
    ref = nm.restore(local_zarr, weights=tiny_weights, out=tmp_path / "ref.zarr", **TILED)
    got = nm.restore(url, weights=tiny_weights, out="s3://bucket/api/out.zarr", storage_options=options, **TILED)
    want = _store_array(tmp_path / "ref.zarr")
    have = _store_array("s3://bucket/api/out.zarr", options)
    assert have.dtype == want.dtype and float(np.max(np.abs(have.astype(float) - want))) == 0.0
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))  # the lazy result read from the URL
    objects = _objects(endpoint, "api/out.zarr/")
    assert "api/out.zarr/zarr.json" in objects and "api/out.zarr/0/zarr.json" in objects
    local = {p.relative_to(tmp_path / "ref.zarr").as_posix() for p in (tmp_path / "ref.zarr").rglob("*") if p.is_file()}
    assert {k.removeprefix("api/out.zarr/") for k in objects} == local  # the same keys: no bookkeeping left
    assert not any(SECRET.encode() in v for v in objects.values())
    # a second run of the same settings finds the complete store: skipped, as for a local path
    with pytest.raises(mio.OutputExistsError) as e:
        nm.restore(url, weights=tiny_weights, out="s3://bucket/api/out.zarr", storage_options=options, **TILED)
    assert e.value.matches and SECRET not in str(e.value)
    # restore_lazy reads the URL with the same options
    lazy = nm.restore_lazy(url, weights=tiny_weights, storage_options=options, **TILED)
    np.testing.assert_array_equal(np.asarray(lazy), np.asarray(ref))
    # a prefix holding objects we did not write is left alone
    _s3(endpoint).put_object(Bucket="bucket", Key="api/foreign.zarr/data.bin", Body=b"theirs")
    with pytest.raises(mio.OutputError, match="not a napari-mirnet result"):
        nm.restore(url, weights=tiny_weights, out="s3://bucket/api/foreign.zarr", storage_options=options, **TILED)
    assert list(_objects(endpoint, "api/foreign.zarr/")) == ["api/foreign.zarr/data.bin"]


def test_cli_restores_s3_inputs_into_an_s3_folder(s3w, local_zarr, tiny_weights, tmp_path, capfd):
    endpoint, options = s3w
    ins = [_upload(endpoint, local_zarr, f"cli/{n}.zarr") for n in ("a", "b")]
    flags = ["--storage-option", f"client_kwargs.endpoint_url={endpoint}", "--storage-option", "key=k",
             "--storage-option", f"secret={SECRET}", "--tile", "48", "--halo", "8", "--blend", "4",
             "--device", "cpu", "--weights", tiny_weights]  # fmt: skip
    assert main(["restore", *ins, "-o", "s3://bucket/results/", *flags]) == 0
    assert main(["restore", str(local_zarr), "-o", str(tmp_path / "ref.zarr"), *flags]) == 0
    want = _store_array(tmp_path / "ref.zarr")
    for n in ("a", "b"):  # named as in a local folder
        have = _store_array(f"s3://bucket/results/{n}.zarr", options)
        assert float(np.max(np.abs(have.astype(float) - want))) == 0.0
    assert main(["restore", *ins, "-o", "s3://bucket/results/", *flags]) == 0  # complete: skipped
    out = capfd.readouterr()
    assert "already complete, skipped" in out.err
    assert SECRET not in out.out + out.err
    assert not any(SECRET.encode() in v for v in _objects(endpoint, "results/").values())
    # a missing input fails at planning with a message that names the URL, never the secret
    assert main(["restore", "s3://bucket/cli/missing.zarr", "-o", "s3://bucket/results/m.zarr", *flags, "-q"]) == 1
    out = capfd.readouterr()
    assert "s3://bucket/cli/missing.zarr" in out.err and SECRET not in out.out + out.err


def test_cli_restores_every_image_of_an_s3_folder(s3w, local_zarr, tiny_weights, tmp_path):
    """An input URL ending in / is a folder, as a local one: its images (zarr stores and files), not
    its hidden objects or other files."""
    import boto3

    endpoint, options = s3w
    for n in ("a", "b"):
        _upload(endpoint, local_zarr, f"folder/{n}.zarr")
    c = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="k", aws_secret_access_key="s")
    for key in ("folder/notes.txt", "folder/.hidden.png"):
        c.put_object(Bucket="bucket", Key=key, Body=b"not an image")
    flags = ["--storage-option", f"client_kwargs.endpoint_url={endpoint}", "--storage-option", "key=k",
             "--storage-option", f"secret={SECRET}", "--tile", "48", "--halo", "8", "--blend", "4",
             "--device", "cpu", "--weights", tiny_weights, "-q"]  # fmt: skip
    assert main(["restore", "s3://bucket/folder/", "-o", "s3://bucket/folder-out/", *flags]) == 0
    want = _store_array(_upload_ref(local_zarr, tiny_weights, tmp_path))
    assert sorted({k.split("/")[1] for k in _objects(endpoint, "folder-out/")}) == ["a.zarr", "b.zarr"]
    for n in ("a", "b"):
        assert np.array_equal(_store_array(f"s3://bucket/folder-out/{n}.zarr", options), want)
    assert main(["restore", "s3://bucket/none/", "-o", "s3://bucket/x/", *flags]) == 1  # an empty "folder"


def _upload_ref(local_zarr, weights, tmp_path):
    ref = tmp_path / "ref.zarr"
    nm.restore(str(local_zarr), weights=weights, out=str(ref), tile=48, halo=8, blend=4, device="cpu")
    return ref


# ------------------------------------------------------------------------------ GeoTIFF to s3
def test_geotiff_output_to_s3_is_uploaded_complete(s3w, tiny_weights, tmp_path):
    rasterio = pytest.importorskip("rasterio")
    endpoint, options = s3w
    src = DATA / "RGB.byte.crop.tif"
    url = "s3://bucket/geo/out.tif"
    got = nm.restore(src, weights=tiny_weights, out=url, storage_options=options, **TILED)
    nm.restore(src, weights=tiny_weights, out=tmp_path / "ref.tif", **TILED)
    (tmp_path / "dl.tif").write_bytes(_objects(endpoint, "geo/out.tif")["geo/out.tif"])
    with rasterio.open(src) as a, rasterio.open(tmp_path / "dl.tif") as b, rasterio.open(tmp_path / "ref.tif") as r:
        assert (b.crs, b.transform, b.count, b.dtypes, b.nodata) == (a.crs, a.transform, a.count, a.dtypes, a.nodata)
        np.testing.assert_array_equal(b.read(), r.read())
        np.testing.assert_array_equal(np.moveaxis(b.read(), 0, -1), np.asarray(got))
    assert list(_objects(endpoint, "geo/")) == ["geo/out.tif"]  # one object: nothing partial was put
    # the local work file is gone; the record is read back through fsspec: the same call skips it
    from napari_mirnet.outputs import remote, stored_record

    assert not remote.work_file(url).parent.exists()
    assert stored_record(url, options)["task"] == "denoise"
    with pytest.raises(mio.OutputExistsError) as e:
        nm.restore(src, weights=tiny_weights, out=url, storage_options=options, **TILED)
    assert e.value.matches
    # an object we did not write is refused without overwrite=True
    _s3(endpoint).put_object(Bucket="bucket", Key="geo/foreign.tif", Body=b"not a tiff")
    with pytest.raises(mio.OutputError, match="overwrite=True"):
        nm.restore(src, weights=tiny_weights, out="s3://bucket/geo/foreign.tif", storage_options=options, **TILED)


# ---------------------------------------------------------------------------- finetune from http
def test_finetune_reads_an_http_ome_zarr(http_folder, gray_identity, tmp_path, capsys):
    from conftest import toy

    folder, base, served = http_folder
    _, noisy = toy(n=2, size=64)
    mio.write_image(tmp_path / "noisy.zarr", noisy, "ZYX")
    shutil.copytree(tmp_path / "noisy.zarr", folder / "ft-noisy.zarr")
    out = tmp_path / "ft.pth"
    args = ["finetune", f"{base}/ft-noisy.zarr", "-o", str(out), "--weights", gray_identity, "--steps", "2",
            "--patch", "32", "--device", "cpu", "-q", "--storage-option", "block_size=65536"]  # fmt: skip
    assert main(args) == 0, capsys.readouterr().err
    assert out.is_file() and "napari-mirnet restore" in capsys.readouterr().out
    assert served["/ft-noisy.zarr/zarr.json"] > 0  # read over HTTP, not from a local copy
    meta = json.dumps(__import__("torch").load(out, weights_only=False)["meta"])
    assert base not in meta  # the model records the data's shape, not where it was read from


def test_an_interrupted_tiff_upload_resumes_from_its_local_work_store(s3w, local_zarr, tiny_weights, tmp_path):
    import threading

    from napari_mirnet.outputs import tiff_work_store
    from napari_mirnet.progress import Cancelled

    endpoint, options = s3w
    url, cancel, seen = "s3://bucket/resume/out.tif", threading.Event(), []

    def stop_after_two(p):
        seen.append(p)
        if len(seen) >= 2:
            cancel.set()

    with pytest.raises(Cancelled):
        nm.restore(local_zarr, weights=tiny_weights, out=url, storage_options=options, progress=stop_after_two,
                   cancel=cancel, **TILED)  # fmt: skip
    assert _objects(endpoint, "resume/") == {}  # nothing at the URL until the file is complete
    work = tiff_work_store(url)
    assert work.is_dir() and "s3:" not in str(work)  # local, in the cache, keyed by the URL
    done = []
    got = nm.restore(local_zarr, weights=tiny_weights, out=url, storage_options=options, progress=done.append, **TILED)
    ref = nm.restore(local_zarr, weights=tiny_weights, out=tmp_path / "ref.tif", **TILED)
    assert 0 < len(done) < len(seen) + len(done) and not work.parent.exists()
    np.testing.assert_array_equal(np.asarray(got), np.asarray(ref))
    (tmp_path / "dl.tif").write_bytes(_objects(endpoint, "resume/")["resume/out.tif"])
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "dl.tif"), tifffile.imread(tmp_path / "ref.tif"))


def test_a_wrong_secret_fails_without_showing_it(s3_server, local_zarr, tiny_weights, capfd):
    import boto3

    endpoint, key, secret = s3_server
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key,
                 aws_secret_access_key=secret).create_bucket(Bucket="locked")  # fmt: skip
    wrong = "WrongSecret-" + secret[::-1]
    args = ["restore", str(local_zarr), "-o", "s3://locked/out.zarr", "--weights", tiny_weights, "--device", "cpu",
            "--storage-option", f"client_kwargs.endpoint_url={endpoint}", "--storage-option", "max_concurrency=1",
            "--storage-option", f"key={key}", "--storage-option", f"secret={wrong}", "-q"]  # fmt: skip
    assert main(args) == 1
    out = capfd.readouterr()
    assert "s3://locked/out.zarr" in out.err and wrong not in out.out + out.err and secret not in out.err


def test_outputs_are_planned_for_url_inputs_and_url_folders(tmp_path):
    from napari_mirnet.outputs import plan_outputs

    urls = ["s3://bucket/in/a.ome.zarr", "https://h/data/b.png", "s3://bucket/in/c"]
    pairs = plan_outputs(urls, tmp_path / "res", task="denoise")
    assert [d.name for _, d in pairs] == ["a.ome.zarr", "b.png", "c.zarr"]  # as for local inputs
    pairs = plan_outputs(urls, "s3://bucket/res/", task="denoise", format="tif")
    assert [d for _, d in pairs] == ["s3://bucket/res/a.ome.tif", "s3://bucket/res/b.tif", "s3://bucket/res/c.tif"]
    assert plan_outputs(urls[:1], "gs://b/one.tif", task="denoise") == [(urls[0], "gs://b/one.tif")]
    with pytest.raises(ValueError, match="need an output folder"):
        plan_outputs(urls, "s3://bucket/one.tif", task="denoise")
    with pytest.raises(ValueError, match="is, holds or lies inside the input s3://bucket/in/a.ome.zarr"):
        plan_outputs(urls[:1], "s3://bucket/in/a.ome.zarr", task="denoise")
    with pytest.raises(ValueError, match="lies inside the input"):
        plan_outputs(urls[:1], "s3://bucket/in/a.ome.zarr/", task="denoise", format="zarr")
    with pytest.raises(ValueError, match="cannot be written"):
        plan_outputs(urls, "https://h/res/", task="denoise")
