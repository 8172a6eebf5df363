"""The README's main job, as a user runs it: write the sample, restore it with the shipped model."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import SAFETY_S
from skimage import data, io
from skimage.metrics import peak_signal_noise_ratio as psnr


def _cli(*args, cwd):
    return subprocess.run(
        [sys.executable, "-m", "napari_mirnet.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=SAFETY_S
    )


@pytest.mark.slow
def test_sample_then_restore_offline(tmp_path):
    made = _cli("sample", "noisy", "noisy.png", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    done = _cli("restore", "noisy.png", "-o", "restored.png", "--task", "denoise", "-q", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    clean = data.astronaut()  # held out from the shipped models' training
    noisy, restored = io.imread(tmp_path / "noisy.png"), io.imread(tmp_path / "restored.png")
    assert restored.shape == noisy.shape and restored.dtype == np.uint8
    assert psnr(clean, restored) > psnr(clean, noisy) + 6


@pytest.mark.slow
def test_dual_pixel_sample_writes_both_views(tmp_path):
    made = _cli("sample", "dualpixel", "dp.tif", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    left, right = io.imread(tmp_path / "dp_left.tif"), io.imread(tmp_path / "dp_right.tif")
    assert left.shape == right.shape == (256, 256, 3) and left.dtype == np.uint16
    assert not np.array_equal(left, right)
