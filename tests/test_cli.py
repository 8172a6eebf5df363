"""The napari-mirnet command: restore files/folders/zarr, skip/refuse/overwrite, weights, exit codes, kill+resume."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
import zarr
from PIL import Image

from napari_mirnet import engine
from napari_mirnet.cli import main

RNG = np.random.default_rng(3)


def _args(weights, *extra):
    return ["--weights", weights, "--device", "cpu", "--tile", "48", "--halo", "8", "--blend", "4", "-q", *extra]


@pytest.fixture
def files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    rgb = RNG.integers(0, 256, (60, 70, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(d / "a.png")
    Image.fromarray(rgb[:50]).save(d / "b.jpg")
    tifffile.imwrite(d / "c.tif", RNG.integers(0, 4000, (2, 50, 60), dtype=np.uint16), imagej=True, metadata={"axes": "ZYX"})
    return d


@pytest.mark.slow
def test_restore_file_to_zarr_then_skip_refuse_overwrite(tiny_weights, files, tmp_path, capsys):
    out = tmp_path / "o.zarr"
    assert main(["restore", str(files / "c.tif"), "-o", str(out), *_args(tiny_weights)]) == 0
    stack = tifffile.imread(files / "c.tif")
    np.testing.assert_array_equal(
        zarr.open_group(str(out))["0"][...], engine.restore(stack, weights=tiny_weights, axes="ZYX", tile=48, halo=8, blend=4, device="cpu")
    )
    capsys.readouterr()
    assert main(["restore", str(files / "c.tif"), "-o", str(out), *_args(tiny_weights)]) == 0
    assert "already complete, skipped" in capsys.readouterr().err
    args = _args(tiny_weights)
    args[args.index("--tile") + 1] = "64"
    assert main(["restore", str(files / "c.tif"), "-o", str(out), *args]) == 1
    assert "already complete (from other settings)" in capsys.readouterr().err
    assert main(["restore", str(files / "c.tif"), "-o", str(out), *args, "--overwrite"]) == 0


@pytest.mark.slow
def test_tta_flag_reaches_the_engine_and_the_store(tiny_weights, files, tmp_path):
    out = tmp_path / "t.zarr"
    assert main(["restore", str(files / "a.png"), "-o", str(out), *_args(tiny_weights, "--tta")]) == 0
    rgb = np.asarray(Image.open(files / "a.png"))
    kw = dict(weights=tiny_weights, tile=48, halo=8, blend=4, device="cpu")
    got = np.moveaxis(zarr.open_group(str(out))["0"][...], 0, -1)  # stored as CYX
    np.testing.assert_array_equal(got, engine.restore(rgb, tta=True, **kw))
    assert not np.array_equal(got, engine.restore(rgb, **kw))
    # the same output without --tta is another run, not a finished one to skip
    assert main(["restore", str(files / "a.png"), "-o", str(out), *_args(tiny_weights)]) == 1


@pytest.mark.slow
def test_folder_gives_one_output_per_input(tiny_weights, files, tmp_path):
    out = tmp_path / "out"
    assert main(["restore", str(files), "-o", str(out), *_args(tiny_weights)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.tif"]
    assert np.asarray(Image.open(out / "a.png")).shape == (60, 70, 3)
    assert tifffile.imread(out / "c.tif").shape == (2, 50, 60)
    out2 = tmp_path / "out2"
    assert main(["restore", str(files / "a.png"), str(files / "c.tif"), "-o", str(out2), "--format", "zarr", *_args(tiny_weights)]) == 0
    assert sorted(p.name for p in out2.iterdir()) == ["a.zarr", "c.zarr"]
    # an existing non-zarr output is not replaced without --overwrite
    assert main(["restore", str(files / "a.png"), "-o", str(out / "a.png"), *_args(tiny_weights)]) == 1


def test_errors_and_exit_codes(tiny_weights, files, tmp_path, capsys):
    assert main(["restore", str(tmp_path / "missing.tif"), "-o", str(tmp_path / "x.zarr"), *_args(tiny_weights)]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["restore", str(files / "a.png"), "-o", str(tmp_path / "x.zarr"), "--tile", "30"])
    assert e.value.code == 2 and "multiple of 4" in capsys.readouterr().err
    assert main(["restore", str(files), "-o", str(tmp_path / "one.tif"), *_args(tiny_weights)]) == 2
    assert "need an output folder" in capsys.readouterr().err
    # one bad input does not stop the others; the exit code reports it
    (files / "bad.png").write_bytes(b"not a png")
    assert main(["restore", str(files), "-o", str(tmp_path / "o2"), *_args(tiny_weights)]) == 1
    assert (tmp_path / "o2" / "c.tif").exists()
    assert main(["restore", str(files / "a.png"), "-o", str(tmp_path / "z.zarr"), "--axes", "YX", *_args(tiny_weights)]) == 1
    assert "axes='YX' has 2 letters" in capsys.readouterr().err


def test_weights_commands(capsys, tiny_weights):
    assert main(["weights", "list"]) == 0
    out = capsys.readouterr().out
    assert "real_denoising" in out and "Academic Public License" in out
    assert main(["weights", "path", "sr_x2"]) == 1
    assert "weights fetch sr_x2" in capsys.readouterr().err
    assert main(["weights", "path", tiny_weights]) == 0
    assert main(["weights", "path", "nonsense"]) == 1
    with pytest.raises(SystemExit) as e:
        main(["weights"])
    assert e.value.code == 2


def test_train_subcommand_is_registered(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0 and "usage" in capsys.readouterr().out


@pytest.mark.slow
def test_killed_run_resumes_to_an_identical_result(tiny_weights, tmp_path):
    """A real CLI process killed with SIGKILL mid-run; the same command finishes it bit for bit."""
    img = RNG.integers(0, 256, (384, 384, 3), dtype=np.uint8)
    src = zarr.create_array(str(tmp_path / "in.zarr"), shape=img.shape, chunks=(128, 128, 3), dtype="uint8")
    src[...] = img
    out = tmp_path / "out.zarr"
    cmd = [sys.executable, "-m", "napari_mirnet.cli", "restore", str(tmp_path / "in.zarr"), "-o", str(out),
           "--weights", tiny_weights, "--device", "cpu", "--tile", "40", "--halo", "4", "--blend", "4", "-q"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    frac = 0.0
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            frac = float(zarr.open_group(str(out), mode="r")["mirnet_done"][...].mean())
        except Exception:
            frac = 0.0
        if frac >= 0.15:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    if proc.returncode != -signal.SIGKILL:
        pytest.skip(f"the run ended before it could be killed (rc {proc.returncode})")
    attrs = dict(zarr.open_group(str(out), mode="r").attrs)
    assert attrs["napari_mirnet"]["complete"] is False and "ome" not in attrs
    done_at_kill = zarr.open_group(str(out), mode="r")["mirnet_done"][...].copy()
    assert 0 < done_at_kill.mean() < 1
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    g = zarr.open_group(str(out), mode="r")
    assert dict(g.attrs)["napari_mirnet"]["complete"] is True
    # the same command, never interrupted, into another store
    fresh = tmp_path / "fresh.zarr"
    assert subprocess.run([str(fresh) if c == str(out) else c for c in cmd], capture_output=True).returncode == 0
    np.testing.assert_array_equal(g["0"][...], zarr.open_group(str(fresh), mode="r")["0"][...])
    # and the same pixels as the API (1 LSB at most: torch's thread count may differ in this process)
    expected = np.moveaxis(engine.restore(img, weights=tiny_weights, device="cpu", tile=40, halo=4, blend=4), -1, 0)
    np.testing.assert_allclose(g["0"][...].astype(int), expected.astype(int), atol=1, rtol=0)
