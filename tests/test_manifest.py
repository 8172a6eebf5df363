"""The plugin manifest: valid, one file, found by napari from this install and from a built wheel."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]
WIDGETS = {"Denoise", "Super-resolution", "Low-light enhancement", "Contrast enhancement", "Dual-pixel defocus deblur"}
SAMPLES = {"noisy_image", "lowlight_image", "lowres_image", "low_contrast_image", "dual_pixel_views", "noisy_stack"}


def test_single_manifest_is_a_symlink():
    link = ROOT / "napari_mirnet" / "napari.yaml"
    assert link.is_symlink() and os.readlink(link) == "../napari.yaml"
    assert link.resolve() == (ROOT / "napari.yaml").resolve()


def test_npe2_validate():
    exe = shutil.which("npe2")
    cmd = [exe] if exe else [sys.executable, "-m", "npe2"]
    res = subprocess.run([*cmd, "validate", str(ROOT / "napari.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "valid" in res.stdout


def test_every_command_imports():
    manifest = npe2.PluginManifest.from_file(ROOT / "napari.yaml")
    for cmd in manifest.contributions.commands:
        module, name = cmd.python_name.split(":")
        assert callable(getattr(importlib.import_module(module), name)), cmd.python_name


def test_discovered_from_this_install():
    pm = npe2.PluginManager()
    pm.discover()
    manifest = pm.get_manifest("napari-mirnet")
    assert {w.display_name for w in manifest.contributions.widgets} == WIDGETS
    assert {s.key for s in manifest.contributions.sample_data} == SAMPLES


@pytest.mark.slow
def test_wheel_in_fresh_venv_is_listed(tmp_path):
    pytest.importorskip("build")
    # build from a copy: the shared tree's build/ folder may be in use by someone else
    src = tmp_path / "src"
    shutil.copytree(
        ROOT, src, symlinks=True,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "*.zarr"),
    )
    run = dict(capture_output=True, text=True, check=True)
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(src)], **run)
    wheel = next((tmp_path / "dist").glob("napari_mirnet-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], **run)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], **run)
    # run from tmp_path so that the source tree is not importable from the working directory
    probe = (
        "import json, os, napari_mirnet, npe2; pm = npe2.PluginManager(); pm.discover(); "
        "m = pm.get_manifest('napari-mirnet'); yaml = os.path.join(os.path.dirname(napari_mirnet.__file__), 'napari.yaml'); "
        "print(json.dumps({'file': napari_mirnet.__file__, 'yaml_is_file': os.path.isfile(yaml) and not os.path.islink(yaml), "
        "'widgets': [w.display_name for w in m.contributions.widgets], 'samples': [s.key for s in m.contributions.sample_data]}))"
    )
    out = json.loads(subprocess.run([str(py), "-c", probe], cwd=tmp_path, **run).stdout)
    assert out["file"].startswith(str(venv)), out["file"]
    assert out["yaml_is_file"]
    assert set(out["widgets"]) == WIDGETS and set(out["samples"]) == SAMPLES
    listing = subprocess.run([str(py), "-m", "npe2", "list", "-f", "json"], cwd=tmp_path, **run).stdout
    print(listing)
    entry = next(p for p in json.loads(listing) if p["name"] == "napari-mirnet")
    assert entry["version"] == "0.1.0" and entry["contributions"]["widgets"] == 5
