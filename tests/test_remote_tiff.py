"""TIFF, OME-TIFF and GeoTIFF/COG read from URLs: byte ranges only, equal to the local read, retried, and
clear errors at open (real servers on 127.0.0.1: the Range server, a flaky Range server, moto)."""

from __future__ import annotations

import pickle
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from napari_mirnet.io import chunk_cache, open_image, retry
from napari_mirnet.io.retry import RemoteReadError

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")
rasterio = pytest.importorskip("rasterio")

DATA = Path(__file__).parent / "data" / "geotiff"
TILE = 256


def make_cog(path: Path, factor: int = 12) -> Path:
    """RGB.byte.crop.tif upsampled (1920 px a side, noise added so that tiles do not compress to nothing)
    as a COG: 256 px tiles, deflate, overviews 1/2, 1/4, 1/8; about 6 MB."""
    from rasterio.enums import Resampling
    from rasterio.shutil import copy

    with rasterio.open(DATA / "RGB.byte.crop.tif") as ds:
        data, prof = ds.read(), ds.profile
    up = np.repeat(np.repeat(data, factor, 1), factor, 2)
    noise = np.random.default_rng(0).integers(-8, 9, up.shape)
    up = np.where(up > 0, np.clip(up.astype(int) + noise, 1, 255), 0).astype(np.uint8)
    t = prof["transform"]
    prof.update(
        width=up.shape[2],
        height=up.shape[1],
        transform=rasterio.Affine(t.a / factor, t.b, t.c, t.d, t.e / factor, t.f),
        tiled=True,
        blockxsize=TILE,
        blockysize=TILE,
        compress="deflate",
    )
    tmp = path.with_name("tiled-" + path.name)
    with rasterio.open(tmp, "w", **prof) as ds:
        ds.write(up)
        ds.build_overviews([2, 4, 8], Resampling.average)
    copy(
        tmp,
        path,
        driver="GTiff",
        tiled=True,
        blockxsize=TILE,
        blockysize=TILE,
        compress="deflate",
        copy_src_overviews=True,
    )
    tmp.unlink()
    return path


@pytest.fixture(scope="module")
def cog(http_folder):
    """(local path, URL, bytes served per path) of the COG in the session's Range server folder."""
    folder, base, served = http_folder
    return make_cog(folder / "cog.tif"), f"{base}/cog.tif", served


def tile_bytes(path, row: int, col: int) -> tuple[int, int]:
    """The byte range [lo, hi) of one full-resolution tile of a tiled TIFF."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        i = row * -(-page.imagewidth // page.tilewidth) + col
        return page.dataoffsets[i], page.dataoffsets[i] + page.databytecounts[i]


def same_meta(remote, local):
    assert remote.axes == local.axes
    assert remote.meta.replace(name=None) == local.meta.replace(name=None)


def test_cog_crop_reads_a_small_fraction_and_equals_local(cog):
    path, url, served = cog
    served.pop("/cog.tif", None)
    src, ref = open_image(url), open_image(path)
    crop = np.s_[768:1280, 768:1280]  # 512 x 512: four whole tiles
    np.testing.assert_array_equal(np.asarray(src.array[crop]), np.asarray(ref.array[crop]))
    size = path.stat().st_size
    fraction = served["/cog.tif"] / size
    print(f"COG {size} B: a 512x512 crop read {served['/cog.tif']} B ({fraction:.1%}), header included")
    assert fraction < 0.15
    same_meta(src, ref)
    assert ref.meta.geo.crs and ref.meta.nodata == 0.0
    assert src.meta.name == url


def test_cog_overview_reads_a_small_fraction(cog):
    path, url, served = cog
    served.pop("/cog.tif", None)
    src, ref = open_image(url, level=2), open_image(path, level=2)
    assert src.array.shape == (480, 480, 3)
    np.testing.assert_array_equal(np.asarray(src.array[:]), np.asarray(ref.array[:]))
    assert served["/cog.tif"] / path.stat().st_size < 0.15
    same_meta(src, ref)
    full = open_image(path).meta.geo.transform
    assert src.meta.geo.transform[0] == pytest.approx(4 * full[0])  # a pixel of 1/4 is four times as wide
    with pytest.raises(ValueError, match="overviews"):
        open_image(url, level=7)


def test_remote_arrays_pickle_and_reopen_in_another_thread(cog, http_folder, tmp_path):
    import tifffile

    folder, base, _ = http_folder
    plain = rng_image((300, 260, 3))
    tifffile.imwrite(folder / "plain.tif", plain, tile=(128, 128), photometric="rgb")
    for url, local in ((cog[1], cog[0]), (f"{base}/plain.tif", folder / "plain.tif")):
        arr = pickle.loads(pickle.dumps(open_image(url).array))  # what a dask.distributed worker gets
        out = {}
        t = threading.Thread(target=lambda a=arr, o=out: o.setdefault("v", np.asarray(a[10:200, 20:150])))
        t.start()
        t.join()
        np.testing.assert_array_equal(out["v"], np.asarray(open_image(local).array[10:200, 20:150]))


def rng_image(shape, dtype=np.uint16, seed=1):
    return np.random.default_rng(seed).integers(0, 4000, size=shape).astype(dtype)


def test_ome_and_plain_tiff_over_http_read_as_local(http_folder):
    import tifffile

    folder, base, served = http_folder
    stack = rng_image((2, 3, 768, 640))  # Z C Y X
    tifffile.imwrite(
        folder / "stack.ome.tif",
        stack,
        tile=(128, 128),
        compression="zlib",
        metadata={"axes": "ZCYX", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5, "Channel": {"Name": ["a", "b", "c"]}},
    )
    tifffile.imwrite(folder / "gray.tif", rng_image((90, 70), np.uint8))
    for name in ("stack.ome.tif", "gray.tif"):
        src, ref = open_image(f"{base}/{name}"), open_image(folder / name)
        same_meta(src, ref)
        np.testing.assert_array_equal(np.asarray(src.array[:]), np.asarray(ref.array[:]))
    assert open_image(f"{base}/stack.ome.tif").meta.source_format == "ome-tiff"
    served.pop("/stack.ome.tif", None)
    np.asarray(open_image(f"{base}/stack.ome.tif").array[1, 2, :128, :128])  # one tile of 6 x 30
    size = (folder / "stack.ome.tif").stat().st_size
    print(f"OME-TIFF {size} B: opening it and reading one tile of 180 read {served['/stack.ome.tif']} B")
    assert served["/stack.ome.tif"] < size / 10


def test_geotiff_from_s3_equals_local(s3_bucket):
    endpoint, options = s3_bucket
    for name in ("RGB.byte.crop.tif", "rmnp-dem.tif"):
        s3_bucket.client().put_object(Bucket=s3_bucket.bucket, Key=f"scenes/{name}", Body=(DATA / name).read_bytes())
        src, ref = open_image(s3_bucket.url(f"scenes/{name}"), storage_options=options), open_image(DATA / name)
        same_meta(src, ref)
        np.testing.assert_array_equal(np.asarray(src.array[:]), np.asarray(ref.array[:]))
        assert src.meta.name == s3_bucket.url(f"scenes/{name}")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        open_image(s3_bucket.url("scenes/none.tif"), storage_options=options)


# ------------------------------------------------------------------------------------- failures
@pytest.fixture
def fast_retries(monkeypatch):
    """Retries as in production but with short waits: 3 tries, 0.05 s then 0.1 s."""
    monkeypatch.setattr(retry, "TRIES", 3)
    monkeypatch.setattr(retry, "FIRST_DELAY", 0.05)


@pytest.fixture
def flaky_cog(flaky_folder, cog):
    folder, base, served, rules = flaky_folder
    shutil.copy(cog[0], folder / "cog.tif")
    return folder / "cog.tif", base.replace("http://", "http://alice:hunter22@") + "/cog.tif", base, rules


@pytest.mark.parametrize("mode", ["503", "close"])
def test_a_failing_chunk_is_retried(flaky_cog, fast_retries, mode):
    path, url, _, rules = flaky_cog
    src = open_image(url)
    lo, hi = tile_bytes(path, 4, 4)
    rules.append({"path": "/cog.tif", "mode": mode, "lo": lo, "hi": hi, "left": 4})
    region = np.s_[1024:1280, 1024:1280]
    np.testing.assert_array_equal(np.asarray(src.array[region]), np.asarray(open_image(path).array[region]))
    assert rules[0]["hits"] == 4  # GDAL tried some itself, the rest was io.retry's


@pytest.mark.parametrize("mode", ["503", "close"])
def test_a_chunk_that_keeps_failing_names_url_and_region(flaky_cog, fast_retries, mode):
    path, url, base, rules = flaky_cog
    src = open_image(url)
    row = 2 if mode == "503" else 5  # GDAL caches what it read: each case its own tile
    lo, hi = tile_bytes(path, row, 3)
    rules.append({"path": "/cog.tif", "mode": mode, "lo": lo, "hi": hi, "left": None})
    start = time.monotonic()
    with pytest.raises(RemoteReadError) as err:
        np.asarray(src.array[row * TILE : (row + 1) * TILE, 768:1024])
    assert time.monotonic() - start < 30  # bounded: 3 tries, 0.15 s of waits (GDAL's own tries aside)
    text = str(err.value)
    assert f"{base}/cog.tif" in text and "hunter22" not in text and "alice" not in text
    assert f"region [{row * TILE}:{(row + 1) * TILE}, 768:1024, :]" in text and "3 tries" in text


def test_plain_tiff_and_zarr_chunks_are_retried(flaky_folder, fast_retries, tmp_path):
    import tifffile

    from napari_mirnet.io import write_image

    folder, base, _, rules = flaky_folder
    img = rng_image((256, 256))
    tifffile.imwrite(folder / "plain.tif", img, tile=(128, 128))
    write_image(folder / "img.zarr", img, "YX")
    src = open_image(f"{base}/plain.tif")
    lo, hi = tile_bytes(folder / "plain.tif", 1, 1)
    rules.append({"path": "/plain.tif", "mode": "close", "lo": lo, "hi": hi, "left": 2})
    np.testing.assert_array_equal(np.asarray(src.array[128:, 128:]), img[128:, 128:])
    assert rules[-1]["hits"] == 2
    src = open_image(f"{base}/img.zarr")
    chunk = sorted(p for p in (folder / "img.zarr").rglob("*") if p.is_file() and p.name.isdigit())[-1]
    rules.append({"path": "/" + chunk.relative_to(folder).as_posix(), "mode": "503", "left": 2})
    np.testing.assert_array_equal(np.asarray(src.array[:]), img)
    assert rules[-1]["hits"] == 2
    rules[-1]["left"] = None  # now for good: named, not filled with zeros
    chunk_cache.clear()  # the chunk read above is kept a while (io.chunk_cache): fetch it again
    with pytest.raises(RemoteReadError, match=r"img.zarr failed at region \[:, :\] after 3 tries"):
        np.asarray(src.array[:])


def test_opening_retries_a_passing_failure(flaky_cog, fast_retries):
    path, url, _, rules = flaky_cog
    rules.append({"path": "/cog.tif", "mode": "503", "left": 2})  # the first requests: the header
    assert open_image(url).array.shape == (1920, 1920, 3)


@pytest.mark.parametrize(
    ("name", "mode", "error", "words"),
    [
        ("missing.tif", None, FileNotFoundError, "does not exist"),
        ("cog.tif", "403", PermissionError, "access denied"),
        ("text.tif", None, ValueError, "is not a TIFF image"),
        ("notes.txt", None, ValueError, "is not an image napari-mirnet reads"),
        ("page.html", None, ValueError, "is not an image napari-mirnet reads"),
    ],
)
def test_planning_errors_are_clear_and_keep_secrets(flaky_cog, fast_retries, name, mode, error, words):
    path, url, base, rules = flaky_cog
    folder = path.parent
    (folder / "text.tif").write_text("hello, not a TIFF")
    (folder / "notes.txt").write_text("just text")
    (folder / "page.html").write_text("<html>a web page</html>")
    if mode:
        rules.append({"path": f"/{name}", "mode": mode, "left": None})
    with pytest.raises(error) as err:
        open_image(url.replace("/cog.tif", f"/{name}"))
    text = str(err.value)
    assert words in text and f"{base}/{name}" in text and "hunter22" not in text
    assert err.value.__suppress_context__ and err.value.__cause__ is None  # not aiohttp's traceback


def test_planning_error_through_prepare(http_folder, tiny_weights):
    from napari_mirnet.engine.run import prepare

    _, base, _ = http_folder
    with pytest.raises(FileNotFoundError, match="does not exist") as err:
        prepare(base.replace("http://", "http://alice:hunter22@") + "/none.tif", weights=tiny_weights)
    assert "hunter22" not in str(err.value)


def test_wrong_secret_for_a_tiff_is_refused_without_showing_it(s3, monkeypatch):
    import boto3

    endpoint, options = s3
    c = boto3.client("s3", endpoint_url=endpoint)
    if "tiffs" not in [b["Name"] for b in c.list_buckets()["Buckets"]]:
        c.create_bucket(Bucket="tiffs")
    c.put_object(Bucket="tiffs", Key="RGB.tif", Body=(DATA / "RGB.byte.crop.tif").read_bytes())
    src = open_image("s3://tiffs/RGB.tif", storage_options=options)  # the right secret: read
    assert src.array[:5, :5].shape == (5, 5, 3)
    import os

    wrong = {**options, "skip_instance_cache": True, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": "wrong-0815x"}
    with pytest.raises(PermissionError) as err:
        open_image("s3://tiffs/RGB.tif", storage_options=wrong)
    assert "wrong-0815x" not in str(err.value) and "s3://tiffs/RGB.tif" in str(err.value)


def test_restore_of_a_remote_geotiff_keeps_its_georeferencing(http_folder, tmp_path, identity_weights):
    from napari_mirnet import restore

    folder, base, _ = http_folder
    shutil.copy(DATA / "RGB.byte.crop.tif", folder / "rgb.tif")
    url = base.replace("http://", "http://alice:hunter22@") + "/rgb.tif"
    kw = {"weights": identity_weights, "tile": 128, "halo": 16, "device": "cpu"}
    remote, local = tmp_path / "remote.tif", tmp_path / "local.tif"
    restore(url, out=remote, **kw)
    restore(DATA / "RGB.byte.crop.tif", out=local, **kw)
    got, ref = open_image(remote), open_image(local)
    np.testing.assert_array_equal(np.asarray(got.array[:]), np.asarray(ref.array[:]))
    assert got.meta.geo == ref.meta.geo and got.meta.nodata == ref.meta.nodata == 0.0
    with rasterio.open(remote) as ds:
        assert "hunter22" not in str(ds.tags()) and "alice" not in str(ds.tags())  # the redacted URL only


def _read_region(arr):
    return np.asarray(arr[10:200, 20:150])


def test_remote_arrays_are_read_in_another_process(cog, http_folder, s3_bucket):
    """What a dask.distributed worker does: unpickle the array and read, with nothing open beforehand."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import tifffile

    folder, base, _ = http_folder
    tifffile.imwrite(folder / "plain2.tif", rng_image((300, 260)), tile=(128, 128))
    s3_bucket.client().put_object(
        Bucket=s3_bucket.bucket, Key="rgb.tif", Body=(DATA / "RGB.byte.crop.tif").read_bytes()
    )
    cases = [
        (cog[1], None, cog[0]),
        (f"{base}/plain2.tif", None, folder / "plain2.tif"),
        (s3_bucket.url("rgb.tif"), s3_bucket.storage_options, DATA / "RGB.byte.crop.tif"),
    ]
    arrays = [open_image(url, storage_options=opts).array for url, opts, _ in cases]
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        got = list(pool.map(_read_region, arrays))
    for out, (_, _, local) in zip(got, cases):
        np.testing.assert_array_equal(out, _read_region(open_image(local).array))


def test_basic_auth_in_the_url_reaches_gdal_and_tifffile_but_no_message(tmp_path):
    import tifffile
    from servers import serve_basic_auth

    shutil.copy(DATA / "RGB.byte.crop.tif", tmp_path / "geo.tif")
    tifffile.imwrite(tmp_path / "plain.tif", rng_image((64, 48)))
    server, base, _ = serve_basic_auth(tmp_path, "alice:hunter22")
    try:
        for name in ("geo.tif", "plain.tif"):
            src = open_image(base.replace("http://", "http://alice:hunter22@") + f"/{name}")
            np.testing.assert_array_equal(np.asarray(src.array[:]), np.asarray(open_image(tmp_path / name).array[:]))
            assert src.meta.name == f"{base}/{name}"
        with pytest.raises(PermissionError, match="access denied") as err:
            open_image(base.replace("http://", "http://alice:wrong-pw-99@") + "/geo.tif")
        assert "wrong-pw-99" not in str(err.value)
    finally:
        server.shutdown()
        server.server_close()
