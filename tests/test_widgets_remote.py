"""Remote input in napari (issue 32): a layer opened from an OME-Zarr over HTTP restores from the task
widget into a local or an s3:// store, reading its data region by region; URLs and storage options
never reach a message, the result's name or its metadata."""

from __future__ import annotations

import numpy as np
import pytest

import napari_mirnet as nm
from napari_mirnet.io import chunk_cache
from napari_mirnet.widgets.job import Job, parse_storage_options, scrub, zarr_output
from napari_mirnet.widgets.layers import InputError

pytest.importorskip("fsspec")
pytest.importorskip("aiohttp")

SECRET = "hunter22"  # the password in the input URL
TILE = dict(tile=256, halo=32, blend=8)  # 3 x 3 tiles over the 512^2 level 0
CHUNK = 128


def _write_pyramid(path, image: np.ndarray) -> None:
    """A 2-level grey OME-Zarr 0.5 store in 128^2 chunks, as archives publish them (several chunks per
    level: a whole-image read and a region-by-region read differ)."""
    import zarr

    g = zarr.create_group(str(path), zarr_format=3, overwrite=True)
    levels = [image, image[::2, ::2]]
    for k, level in enumerate(levels):
        g.create_array(str(k), data=level, chunks=(CHUNK, CHUNK), dimension_names=["y", "x"])
    g.attrs["ome"] = {
        "version": "0.5",
        "multiscales": [
            {
                "name": "cells",
                "axes": [{"name": "y", "type": "space", "unit": "micrometer"}, {"name": "x", "type": "space"}],
                "datasets": [
                    {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [0.5 * 2**k] * 2}]}
                    for k in range(len(levels))
                ],
            }
        ],
    }


@pytest.fixture(scope="module")
def remote_zarr(http_folder):
    """(URL with a password in it, the same store on disk, bytes-served counter, level-0 chunk bytes)."""
    folder, base, served = http_folder
    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:512, 0:512]
    clean = 20000 + 15000 * np.sin(xx / 23) * np.cos(yy / 17)
    image = np.clip(clean + rng.normal(0, 3000, clean.shape), 0, 65535).astype(np.uint16)
    _write_pyramid(folder / "cells.zarr", image)
    level0 = sum(p.stat().st_size for p in (folder / "cells.zarr" / "0").rglob("*") if p.name != "zarr.json")
    url = base.replace("http://", f"http://alice:{SECRET}@") + "/cells.zarr"
    return url, folder / "cells.zarr", served, level0


def _served(served, level: int) -> int:
    """Bytes of chunk data served from a level of the store (metadata documents left out)."""
    return sum(n for path, n in served.items() if f"/cells.zarr/{level}/" in path and not path.endswith(".json"))


def _open_remote(viewer, qtbot, url, plugin):
    from qtpy.QtWidgets import QApplication

    (layer,) = viewer.open(url, plugin=plugin)
    QApplication.processEvents()  # napari reads what it shows now, not during the run
    qtbot.wait(50)
    assert layer.source.path == url and layer.multiscale
    return layer


def _widget(viewer, weights, layer, out):
    from napari_mirnet.widgets import LOCAL_FILE, OUTPUT_ZARR, DenoiseWidget

    w = DenoiseWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.weights.value = LOCAL_FILE
    w.weights_file.value = weights
    w.image.value = layer
    w.output.value = OUTPUT_ZARR
    w.zarr_path.value = out
    w.tile.value, w.halo.value, w.blend.value = TILE["tile"], TILE["halo"], TILE["blend"]
    w.device.value = "cpu"
    return w


def _run(qtbot, w):
    from conftest import SAFETY_MS

    worker = w()
    assert worker is not None, w.last_status
    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert w.result_layer is not None, w.last_status
    return w.result_layer


@pytest.fixture(scope="module")
def reference(remote_zarr, tiny_weights):
    """The same restore of the store on disk, through the Python API (level 0, the same tiles)."""
    _, local, _, _ = remote_zarr
    return np.asarray(nm.restore(str(local), weights=tiny_weights, device="cpu", **TILE))


def _no_credentials(layer, w, *secrets):
    texts = [layer.name, repr(dict(layer.metadata)), w.last_status, w.status.tooltip]
    for secret in (SECRET, *secrets):
        assert not any(secret in t for t in texts), secret


@pytest.mark.gui
@pytest.mark.slow
@pytest.mark.parametrize("plugin", ["napari-ome-zarr", "napari-mirnet"])
def test_remote_layer_restores_into_local_store_region_by_region(
    make_napari_viewer, qtbot, tiny_weights, remote_zarr, reference, tmp_path, plugin
):
    url, _, served, level0 = remote_zarr
    viewer = make_napari_viewer()
    layer = _open_remote(viewer, qtbot, url, plugin)
    w = _widget(viewer, tiny_weights, layer, tmp_path / "out.zarr")
    served.clear()
    chunk_cache.clear()  # chunks napari fetched to show the layer are not the run's reads
    out = _run(qtbot, w)
    # level 0 (the level a store output restores) read once, chunk by chunk as the tiles need it;
    # the coarser level not at all
    read = _served(served, 0)
    print(f"{plugin}: {read} bytes of level 0 served for the run; level 0 holds {level0}")
    assert level0 * 0.9 <= read <= level0 * 1.5, (read, level0)
    assert _served(served, 1) == 0
    data = out.data[0] if out.multiscale else out.data
    np.testing.assert_array_equal(np.asarray(data), reference)
    assert out.metadata["mirnet"]["source"] == url.replace(f"alice:{SECRET}@", "")
    _no_credentials(out, w)


@pytest.mark.gui
@pytest.mark.slow
@pytest.mark.parametrize("how", ["field", "environment"])
def test_remote_layer_restores_into_s3_store(
    make_napari_viewer, qtbot, tiny_weights, remote_zarr, reference, s3_bucket, monkeypatch, how
):
    url, _, served, level0 = remote_zarr
    endpoint, options = s3_bucket
    viewer = make_napari_viewer()
    layer = _open_remote(viewer, qtbot, url, "napari-ome-zarr")
    out_url = s3_bucket.url("restored/out.zarr")
    w = _widget(viewer, tiny_weights, layer, out_url)
    assert w.zarr_path.value == out_url  # a URL stays a URL (a Path would collapse its "//")
    secret = "field-secret-4711" if how == "field" else "env-secret-0815"  # moto without checks takes any
    if how == "field":
        w.storage_options.value = f"key=AKIAFIELD\nsecret={secret}\nclient_kwargs.endpoint_url={endpoint}"
    else:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAENV")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    served.clear()
    out = _run(qtbot, w)
    assert _served(served, 0) <= level0 * 1.5 and _served(served, 1) == 0
    levels = out.data if out.multiscale else [out.data]
    assert all(hasattr(lv, "dask") for lv in levels)  # the store is read as napari views it
    np.testing.assert_array_equal(np.asarray(levels[0]), reference)
    _no_credentials(out, w, secret)
    s3fs = pytest.importorskip("s3fs")
    fs = s3fs.S3FileSystem(**options, skip_instance_cache=True)
    written = fs.cat(f"{s3_bucket.bucket}/restored/out.zarr/zarr.json").decode()
    assert SECRET not in written and secret not in written and "cells" in written


@pytest.mark.gui
@pytest.mark.slow
def test_refused_s3_output_is_a_message_without_the_secret(make_napari_viewer, qtbot, tiny_weights, s3_server, caplog):
    """moto with signatures checked refuses a wrong secret: the status line, its tooltip and the log
    say so without the secret."""
    import logging

    import boto3

    endpoint, key, right = s3_server
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=key, aws_secret_access_key=right
    )
    if "refused" not in [b["Name"] for b in client.list_buckets()["Buckets"]]:
        client.create_bucket(Bucket="refused")  # the bucket exists: what is refused is the secret
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.uint16), name="img")
    w = _widget(viewer, tiny_weights, layer, "s3://refused/out.zarr")
    secret = "wrong-secret-4711"
    w.storage_options.value = (
        f'{{"key": "{key}", "secret": "{secret}", "skip_instance_cache": true, '
        f'"client_kwargs": {{"endpoint_url": "{endpoint}", "region_name": "us-east-1"}}}}'
    )
    caplog.set_level(logging.INFO, logger="napari_mirnet")  # the widget logs the error's detail
    worker = w()
    assert worker is not None, w.last_status
    from conftest import SAFETY_MS

    qtbot.waitUntil(lambda: w.worker is None, timeout=SAFETY_MS)
    assert w.result_layer is None
    assert "s3://refused/out.zarr" in w.last_status and "credentials" in w.last_status
    assert "PermissionError" in w.last_status and "PermissionError" in caplog.text
    for text in (w.last_status, w.status.tooltip, caplog.text):
        assert secret not in text


@pytest.mark.gui
def test_http_output_is_refused_before_any_work(make_napari_viewer, tiny_weights, remote_zarr):
    url, _, served, _ = remote_zarr
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.uint16), name="img")
    w = _widget(viewer, tiny_weights, layer, url.replace("cells.zarr", "out.zarr"))
    served.clear()
    assert w() is None
    assert "http(s) URLs are read-only" in w.last_status and SECRET not in w.last_status
    assert not served


@pytest.mark.gui
def test_bad_storage_options_are_a_message_without_their_values(make_napari_viewer, tiny_weights):
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((64, 64), np.uint16), name="img")
    w = _widget(viewer, tiny_weights, layer, "s3://bucket/out.zarr")
    w.storage_options.value = "secret=abcd-1234-efgh\nthis line holds topsecret99"
    assert w() is None
    assert "line 2 is not KEY=VALUE" in w.last_status
    assert "topsecret99" not in w.last_status and "abcd-1234-efgh" not in w.last_status


def test_storage_options_parse_json_and_key_value_lines():
    assert parse_storage_options("  ") is None
    assert parse_storage_options('{"anon": true, "client_kwargs": {"endpoint_url": "http://h:9"}}') == {
        "anon": True,
        "client_kwargs": {"endpoint_url": "http://h:9"},
    }
    text = "key=123\nsecret=0042\n# a comment\nanon=false\nmax_concurrency=2\nclient_kwargs.endpoint_url=http://h:9"
    assert parse_storage_options(text) == {
        "key": "123",  # a key stays text, whatever it looks like
        "secret": "0042",
        "anon": False,
        "max_concurrency": 2,
        "client_kwargs": {"endpoint_url": "http://h:9"},
    }
    with pytest.raises(InputError, match="not valid JSON") as err:
        parse_storage_options('{"secret": "s3cr3t-value",}')
    assert "s3cr3t-value" not in str(err.value)
    with pytest.raises(InputError, match="both a value and sub-keys"):
        parse_storage_options("client_kwargs=x\nclient_kwargs.endpoint_url=y")


def test_zarr_output_takes_store_urls_and_refuses_http():
    assert zarr_output("s3://bucket/out.zarr") == "s3://bucket/out.zarr"
    with pytest.raises(InputError, match="read-only") as err:
        zarr_output("https://user:pw99@host/out.zarr")
    assert "pw99" not in str(err.value)
    with pytest.raises(InputError, match="must end in .zarr"):
        zarr_output("s3://bucket/out.tif")


def test_error_messages_lose_urls_and_option_values():
    job = Job(
        task="denoise",
        image=None,
        axes="YX",
        output="x",
        weights=None,
        scale=None,
        layer_kwargs={},
        storage_options={"key": "AKIA1234", "client_kwargs": {"token": "tok-5678"}},
        urls=("https://bob:pw1234@host/a.zarr",),
    )
    text = scrub("failed https://bob:pw1234@host/a.zarr with AKIA1234 and tok-5678", job)
    assert text == "failed https://host/a.zarr with *** and ***"
    assert "AKIA1234" not in repr(job)


@pytest.mark.gui
@pytest.mark.slow
def test_finetune_on_a_remote_layer_reads_patches_not_the_image(
    make_napari_viewer, qtbot, http_folder, tmp_path, monkeypatch, gray_identity
):
    """The fine-tune widget's training process reads random patches from the layer's dask data (over
    HTTP, in the child process): its set-up (patches for validation, the noise and the intensities)
    reads a small part of a 4096^2 level 0, and training goes on patch by patch."""
    from napari_mirnet.widgets import FinetuneWidget

    folder, base, served = http_folder
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:4096, 0:4096].astype(np.float32)
    clean = 20000 + 15000 * np.sin(xx / 23) * np.cos(yy / 17)
    big = np.clip(clean + rng.normal(0, 3000, clean.shape).astype(np.float32), 0, 65535).astype(np.uint16)
    _write_pyramid(folder / "big.zarr", big)
    level0 = sum(p.stat().st_size for p in (folder / "big.zarr" / "0").rglob("*") if p.name != "zarr.json")
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    viewer = make_napari_viewer()
    url = base.replace("http://", f"http://alice:{SECRET}@") + "/big.zarr"
    layer = _open_remote(viewer, qtbot, url, "napari-ome-zarr")
    w = FinetuneWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.layer.value = layer
    w.weights.choices = [("start", gray_identity)]
    w.weights.value = gray_identity
    w.minutes.value = 0.1  # 6 s (a busy machine may spend them all on set-up: no step then)

    def level0_read() -> int:
        return sum(n for path, n in served.items() if "/big.zarr/0/" in path and not path.endswith(".json"))

    at_first_step, on_item = [], w._on_item
    w._on_item = lambda item: (
        item[0] == "step" and not at_first_step and at_first_step.append(level0_read()),
        on_item(item),
    )
    served.clear()
    w.start.clicked()
    qtbot.waitUntil(lambda: w.result is not None or w.error is not None, timeout=120_000)
    assert w.error is None, w.error
    assert w.result.path.is_file()
    setup = at_first_step[0] if at_first_step else level0_read()  # no step: all was set-up
    print(f"fine-tune: {setup} bytes of level 0 served by set-up, {level0_read()} in all; level 0 holds {level0}")
    assert 0 < setup < level0 / 4
    qtbot.waitUntil(lambda: w.start.enabled, timeout=10_000)  # the run's end reached the widget


@pytest.mark.gui
def test_our_reader_opens_an_s3_store_lazily_with_credentials_from_the_environment(
    make_napari_viewer, remote_zarr, s3_bucket, monkeypatch
):
    """napari passes our reader the URL alone: the credentials and endpoint come from the environment."""
    _, local, _, _ = remote_zarr
    client = s3_bucket.client()
    for f in sorted(p for p in local.rglob("*") if p.is_file()):
        client.put_object(
            Bucket=s3_bucket.bucket, Key=f"cells.zarr/{f.relative_to(local).as_posix()}", Body=f.read_bytes()
        )
    key, secret = s3_bucket[1]["key"], s3_bucket[1]["secret"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_bucket.endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(s3_bucket.url("cells.zarr"), plugin="napari-mirnet")
    assert layer.name == "cells" and layer.multiscale and all(hasattr(lv, "dask") for lv in layer.data)
    assert [lv.shape for lv in layer.data] == [(512, 512), (256, 256)]
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    assert secret not in repr(dict(layer.metadata))


@pytest.mark.gui
@pytest.mark.slow
def test_output_onto_the_layers_own_s3_store_is_refused(
    make_napari_viewer, qtbot, tiny_weights, remote_zarr, s3_bucket, monkeypatch
):
    """A layer read from an earlier result on s3 is never overwritten by its own restore, overwrite ticked."""
    _, local, _, _ = remote_zarr
    endpoint, options = s3_bucket
    url = s3_bucket.url("earlier.zarr")
    nm.restore(str(local), weights=tiny_weights, device="cpu", out=url, storage_options=options, **TILE)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", options["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", options["secret"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    viewer = make_napari_viewer()
    (layer,) = viewer.open(url, plugin="napari-mirnet")
    before = np.asarray(layer.data[0] if layer.multiscale else layer.data)
    w = _widget(viewer, tiny_weights, layer, url)
    w.overwrite.value = True
    assert w() is None  # refused before any work
    assert "would write into the store the input layer reads from" in w.last_status
    w.zarr_path.value = url + "/inside.zarr"
    assert w() is None and "input layer reads from" in w.last_status
    from napari_mirnet.io import open_image

    np.testing.assert_array_equal(np.asarray(open_image(url, storage_options=options).array), before)
