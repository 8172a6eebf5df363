"""Issue 31 (first contact, second round), the command-line parts: one output grid rule for the CLI
and the widgets, a short download error with its action first, --version, finetune's help, sample
into a new folder."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_mirnet import __version__
from napari_mirnet import io as mio
from napari_mirnet.cli import main

RNG = np.random.default_rng(31)


@pytest.mark.slow
def test_cli_super_resolution_of_a_png_has_the_widgets_grid(tiny_weights, tmp_path):
    """x2 of a PNG (no pixel size) into .zarr: pixel size 1/2 and the first centre at -1/4, in input
    pixels, as the widget gives the same input; so the result covers the input's extent."""
    from napari.layers import Image as ImageLayer

    from napari_mirnet.widgets import result_layer_kwargs

    rgb = RNG.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = tmp_path / "a_x2.zarr"
    args = ["restore", str(tmp_path / "a.png"), "-o", str(out), "--task", "super_resolution", "--scale", "2"]
    assert main([*args, "--weights", tiny_weights, "--device", "cpu", "-q"]) == 0
    meta = mio.open_image(out).meta
    widget = result_layer_kwargs(ImageLayer(rgb, rgb=True, name="a"), "super_resolution", 2)
    assert [meta.scale["Y"], meta.scale["X"]] == pytest.approx(list(widget["scale"])) == [0.5, 0.5]
    assert [meta.translation["Y"], meta.translation["X"]] == pytest.approx(list(widget["translate"]))
    assert widget["translate"] == pytest.approx((-0.25, -0.25))
    stored = mio.open_image(out)
    shape = dict(zip(stored.axes, stored.array.shape))
    assert (shape["Y"], shape["X"]) == (80, 100)  # 80 rows x 0.5 = the input's 40
    # named by the store, as napari shows it, not by the input's file (a.png) or a path
    from napari_mirnet.napari_io import read_ome_zarr

    assert stored.meta.name == "a_x2" and read_ome_zarr(str(out))[0][1]["name"] == "a_x2"


@pytest.mark.parametrize("command", ["fetch", "restore"])
def test_cli_download_error_is_short_with_the_action_first(tmp_path, monkeypatch, capsys, command):
    """No network (a host name that cannot resolve): what to copy where, then why in a few words;
    not urllib3's ~600 characters."""
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", "https://mirnet-weights.invalid/releases")
    from napari_mirnet.weights import cached_path

    if command == "fetch":
        rc = main(["weights", "fetch", "real_denoising"])
    else:
        Image.fromarray(RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "a.png")
        rc = main(["restore", str(tmp_path / "a.png"), "-o", str(tmp_path / "r.png"), "--weights", "real_denoising"])
    assert rc != 0
    errors = [line for line in capsys.readouterr().err.splitlines() if "error:" in line]
    assert len(errors) == 1, errors
    action = f"copy https://mirnet-weights.invalid/releases/real_denoising.pth to {cached_path('real_denoising')}"
    assert action in errors[0] and "or use a local file as the weights" in errors[0]
    assert errors[0].index(action) < errors[0].index("could not download: no connection to mirnet-weights.invalid")
    assert "HTTPSConnectionPool" not in errors[0] and "NameResolutionError" not in errors[0]


def test_cli_version(capsys):
    with pytest.raises(SystemExit) as done:
        main(["--version"])
    assert done.value.code == 0
    assert capsys.readouterr().out.strip() == f"napari-mirnet {__version__}"


def test_finetune_help_says_what_objective_and_seed_do(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--objective {auto,neighbor2neighbor,blindspot,recorrupted} self-supervised loss: auto (recorrupted" in text
    assert "--seed SEED random seed of the patches drawn and held out" in text


def test_sample_into_a_missing_folder_creates_it(tmp_path, capsys):
    out = tmp_path / "new" / "deeper" / "noisy.png"
    assert main(["sample", "noisy", str(out)]) == 0, capsys.readouterr().err
    with Image.open(out) as img:
        assert img.mode == "RGB" and min(img.size) > 64
    assert sorted(p.name for p in out.parent.iterdir()) == ["noisy.png"]  # no .partial left behind
