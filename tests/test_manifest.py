"""The plugin manifest: valid, one file, found by napari from this install and from a built wheel."""

from __future__ import annotations

import importlib
import json
import os
import shlex
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

npe2 = pytest.importorskip("npe2")

ROOT = Path(__file__).resolve().parents[1]
WIDGETS = {
    "Denoise",
    "Super-resolution",
    "Low-light enhancement",
    "Contrast enhancement",
    "Dual-pixel defocus deblur",
    "Fine-tune denoiser (self-supervised)",
}
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


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure, fail the test with its exit status, stdout and stderr in full."""
    res = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    if res.returncode != 0:
        pytest.fail(
            f"command failed with exit status {res.returncode}:\n  {shlex.join(map(str, cmd))}\n"
            f"--- stdout ---\n{res.stdout}\n--- stderr ---\n{res.stderr}",
            pytrace=False,
        )
    return res


def _is_this_project(name: str) -> bool:
    # napari_mirnet/, napari_mirnet-0.1.0.dist-info, __editable__.napari_mirnet-0.1.0.pth,
    # __editable___napari_mirnet_0_1_0_finder.py, napari_mirnet.egg-link, ...
    return "napari_mirnet" in name.lower().replace("-", "_")


def _outer_site_dirs() -> list[Path]:
    """The site-packages of the environment that runs the tests: a venv's own (and, where it was made
    with --system-site-packages, its base's), or the interpreter's, plus the user site where enabled."""
    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE:
        dirs.append(site.getusersitepackages())
    out: list[Path] = []
    for d in dirs:
        p = Path(d)
        if p.is_dir() and p.resolve() not in {o.resolve() for o in out}:
            out.append(p)
    return out


@pytest.mark.slow
def test_wheel_in_fresh_venv_is_listed(tmp_path):
    """Build the wheel, install it alone into a fresh venv, and ask npe2 there for the plugin.

    The venv is made *without* --system-site-packages: that would inherit the base interpreter's
    packages, not those of the environment running the tests (a venv of its own, as a user's usually
    is). Instead the dependencies come from this environment's site-packages through a .pth file, with
    everything of napari-mirnet itself (the editable install: its dist-info, finder and .pth) left out,
    so that the manifest can only be found through the wheel's own entry point and package data.
    """
    pytest.importorskip("build")
    # build from a copy: the shared tree's build/ folder may be in use by someone else
    src = tmp_path / "src"
    shutil.copytree(
        ROOT,
        src,
        symlinks=True,
        ignore=shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", ".venv", "*.zarr"),
    )
    _run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", tmp_path / "dist", src])
    wheel = next((tmp_path / "dist").glob("napari_mirnet-*.whl"))
    # every package of the source tree is in the wheel: one missing from pyproject's list is left out
    # silently, and the editable install the other tests use hides it
    with zipfile.ZipFile(wheel) as zf:
        in_wheel = {str(Path(n).parent) for n in zf.namelist() if n.endswith("/__init__.py")}
    in_tree = {str(p.parent.relative_to(ROOT)) for p in (ROOT / "napari_mirnet").rglob("__init__.py")}
    assert in_tree <= in_wheel, f"packages missing from the wheel: {sorted(in_tree - in_wheel)}"

    # this environment's packages, minus napari-mirnet, one filtered view (of symlinks) per site dir
    deps = []
    for i, site_dir in enumerate(_outer_site_dirs()):
        view = tmp_path / "deps" / str(i)
        view.mkdir(parents=True)
        for entry in site_dir.iterdir():
            if not _is_this_project(entry.name):
                (view / entry.name).symlink_to(entry, target_is_directory=entry.is_dir())
        deps.append(view)
    assert deps, "no site-packages found for this interpreter"

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", venv])
    py = venv / "bin" / "python"
    venv_site = Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (venv_site / "outer_env.pth").write_text("".join(f"{d}\n" for d in deps))
    # this environment's pip installs into the venv (pip >= 22.3); --no-deps: dependencies come from the .pth
    _run([sys.executable, "-m", "pip", "--python", py, "install", "-q", "--no-deps", "--no-index", wheel])

    # run from tmp_path so that the source tree is not importable from the working directory
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "PYTHONSTARTUP")}
    env["PYTHONNOUSERSITE"] = "1"
    probe = (
        "import json, os, importlib.metadata as md, napari_mirnet, npe2; pm = npe2.PluginManager(); pm.discover(); "
        "m = pm.get_manifest('napari-mirnet'); yaml = os.path.join(os.path.dirname(napari_mirnet.__file__), 'napari.yaml'); "
        "print(json.dumps({'file': napari_mirnet.__file__, 'yaml_is_file': os.path.isfile(yaml) and not os.path.islink(yaml), "
        "'dists': [str(d.locate_file('')) for d in md.distributions() if d.metadata['Name'] == 'napari-mirnet'], "
        "'widgets': [w.display_name for w in m.contributions.widgets], 'samples': [s.key for s in m.contributions.sample_data], "
        "'shipped': sorted(__import__('napari_mirnet.weights').weights.shipped_models())}))"
    )
    out = json.loads(_run([py, "-c", probe], cwd=tmp_path, env=env).stdout)
    assert out["file"].startswith(str(venv_site)), out
    assert len(out["dists"]) == 1 and out["dists"][0].startswith(str(venv_site)), out
    assert out["yaml_is_file"], out
    assert set(out["widgets"]) == WIDGETS and set(out["samples"]) == SAMPLES, out
    # the shipped models are package data the catalogue finds in the installed wheel
    assert out["shipped"] == sorted(p.stem for p in (ROOT / "napari_mirnet" / "models").glob("*.pth")), out
    listing = _run([py, "-m", "npe2", "list", "-f", "json"], cwd=tmp_path, env=env).stdout
    print(listing)
    entry = next(p for p in json.loads(listing) if p["name"] == "napari-mirnet")
    assert entry["version"] == "0.1.0" and entry["contributions"]["widgets"] == len(WIDGETS)
