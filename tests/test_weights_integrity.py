"""Weights are what the file on disk holds (issue 36 items 18 and 21, issue 30).

A checkpoint replaced on disk is loaded again in the same process, a resumed store is never finished
with the old weights, a cached download that changed since it came is refused, shipped metadata is
read once, and a fine-tuning resume file is never offered as a model. Real checkpoints, a real HTTP
server on 127.0.0.1, real zarr stores.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAFETY_S, make_checkpoint

import napari_mirnet as nm
from napari_mirnet import engine
from napari_mirnet import io as mio
from napari_mirnet import weights as W
from napari_mirnet.cli import main
from napari_mirnet.weights import catalogue, download, loading
from napari_mirnet.weights import files as WF
from napari_mirnet.weights.meta import peek_meta

TILED = dict(tile=32, halo=4, blend=2, device="cpu")
WHOLE = dict(tile=64, halo=0, blend=0, device="cpu")


def _u8(h=90, w=110, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _rewrite_in_place(path: Path, other: Path, keep_mtime: bool) -> None:
    """Overwrite ``path``'s bytes in place (same inode), optionally putting its mtime back."""
    st = path.stat()
    data = other.read_bytes()
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(data)
    if keep_mtime:
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


# ------------------------------------------------------------------------- 18: the same process
def _replace(path: Path, other: Path) -> None:
    """Replace ``path`` by a copy of ``other`` as a fine-tuning run or a download does (a rename)."""
    shutil.copy(other, path.with_name("new.tmp"))
    os.replace(path.with_name("new.tmp"), path)


@pytest.mark.slow
def test_a_checkpoint_replaced_on_disk_is_used_by_the_next_restore(tmp_path):
    path, a, b = tmp_path / "model.pth", tmp_path / "a.pth", tmp_path / "b.pth"
    make_checkpoint(a, seed=1)
    make_checkpoint(b, seed=2)  # same config, same size: only the values differ
    shutil.copy(a, path)
    image = _u8(24, 28)
    first = nm.restore(image, weights=str(path), **WHOLE)
    _replace(path, b)
    second = nm.restore(image, weights=str(path), **WHOLE)
    np.testing.assert_array_equal(second, nm.restore(image, weights=str(b), **WHOLE))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("how", ["replaced", "rewritten", "rewritten, mtime put back"])
def test_a_checkpoint_changed_on_disk_is_loaded_again(tmp_path, how):
    path, a, b = tmp_path / "model.pth", tmp_path / "a.pth", tmp_path / "b.pth"
    make_checkpoint(a, seed=1)
    make_checkpoint(b, seed=2)
    shutil.copy(a, path)
    first = W.cached_model(str(path), "cpu")
    if how == "replaced":
        _replace(path, b)
    else:
        _rewrite_in_place(path, b, keep_mtime=how.endswith("put back"))
    second = W.cached_model(str(path), "cpu")
    assert second.weights_sha256 == hashlib.sha256(b.read_bytes()).hexdigest() != first.weights_sha256
    for (k, v), w in zip(second.state_dict().items(), W.load_model(str(b)).state_dict().values()):
        assert torch.equal(v, w), k


def test_an_unchanged_checkpoint_is_loaded_once_and_not_hashed_again(tmp_path, monkeypatch):
    path = Path(make_checkpoint(tmp_path / "m.pth", seed=3))
    monkeypatch.setattr(WF, "RACY_NS", 0)  # as if written long ago: its identity alone says it is unchanged
    model = W.cached_model(str(path), "cpu")
    loads, hashes = [], []
    monkeypatch.setattr(loading, "load_model", lambda *a, **k: loads.append(a))
    monkeypatch.setattr(WF, "file_sha256", lambda p: hashes.append(p))
    assert all(W.cached_model(str(path), "cpu") is model for _ in range(5))
    assert loads == [] and hashes == []  # a stat per call, nothing read


def test_a_rewrite_the_file_identity_cannot_see_is_caught_by_its_sha256(tmp_path, monkeypatch):
    # a file system whose timestamps are too coarse to see a rewrite (FAT: 2 s) keeps the identity;
    # a file changed that recently is checked by content until it is old enough
    path, b = tmp_path / "m.pth", tmp_path / "b.pth"
    make_checkpoint(path, seed=4)
    make_checkpoint(b, seed=5)
    monkeypatch.setattr(WF, "file_identity", lambda p: (os.stat(p).st_ino, os.stat(p).st_size))
    monkeypatch.setattr(WF, "_racy", lambda identity, seen: True)
    first = W.cached_model(str(path), "cpu")
    assert W.cached_model(str(path), "cpu") is first  # same bytes: the same model
    _rewrite_in_place(path, b, keep_mtime=True)
    second = W.cached_model(str(path), "cpu")
    assert second.weights_sha256 == hashlib.sha256(b.read_bytes()).hexdigest() != first.weights_sha256


def test_a_run_refuses_a_model_that_is_not_the_one_it_started_with(tmp_path):
    path = Path(make_checkpoint(tmp_path / "m.pth", seed=6))
    sha = W.cached_model(str(path), "cpu").weights_sha256
    assert W.cached_model(str(path), "cpu", sha256=sha).weights_sha256 == sha
    make_checkpoint(tmp_path / "n.pth", seed=7)
    os.replace(tmp_path / "n.pth", path)
    with pytest.raises(W.WeightsError, match=r"changed on disk during the run.*started with " + sha):
        W.cached_model(str(path), "cpu", sha256=sha)


@pytest.mark.slow
def test_a_resumed_store_is_not_finished_with_replaced_weights(tmp_path):
    a, b, path, out = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "model.pth", tmp_path / "o.zarr"
    make_checkpoint(a, seed=1)
    make_checkpoint(b, seed=2)
    shutil.copy(a, path)
    image = _u8(56, 60, seed=9)  # 2 x 2 tiles
    cancel = threading.Event()

    def progress(done, total):
        if done >= total - 1:  # all but the last tile
            cancel.set()

    with pytest.raises(engine.Cancelled):  # a killed run: part of the store written with a
        nm.restore(image, weights=str(path), out=out, cancel=cancel, progress=progress, **TILED)
    assert 0 < mio.done_markers(out).sum() < mio.done_markers(out).size
    shutil.copy(b, tmp_path / "new.pth")
    os.replace(tmp_path / "new.pth", path)  # fine-tuned again into the same file
    with pytest.raises(mio.FingerprintMismatch, match="weights_sha256.*overwrite"):
        nm.restore(image, weights=str(path), out=out, **TILED)
    assert not mio.is_complete(out)
    redone = nm.restore(image, weights=str(path), out=out, overwrite=True, **TILED)
    np.testing.assert_array_equal(redone.compute(), nm.restore(image, weights=str(b), **TILED))


# ------------------------------------------------------------------ 21: downloads and their record
@pytest.fixture
def server(weights_server, monkeypatch):
    monkeypatch.setattr(download, "_licence_shown", True)  # the notice is test_weights.py's business
    return weights_server


@pytest.fixture(scope="module")
def official_pair(tmp_path_factory):
    """Two checkpoints of the official 3 -> 3 structure (23 MB each), different values."""
    d = tmp_path_factory.mktemp("official")
    return [Path(make_checkpoint(d / f"{s}.pth", seed=s, n_feat=80, n_mrb=2)) for s in (11, 12)]


def test_a_cached_download_changed_since_is_refused_and_kept(server, official_pair, capsys):
    good, other = official_pair
    shutil.copy(good, server.root / "sr_x2.pth")
    cached = W.fetch("sr_x2", progress=False)
    record = WF.record_path(cached)
    assert WF.read_record(cached) == hashlib.sha256(good.read_bytes()).hexdigest()
    assert W.load_model("sr_x2").weights_sha256 == WF.read_record(cached)

    # replaced by another file of the official structure: the structural check cannot tell, the record can
    shutil.copy(other, cached)
    with pytest.raises(W.WeightsError) as err:
        W.load_model("sr_x2")
    msg = str(err.value)
    assert f"{cached} has changed since it was downloaded" in msg
    assert hashlib.sha256(other.read_bytes()).hexdigest() in msg and WF.read_record(cached) in msg
    assert f"Delete {cached} and {record}" in msg and "napari-mirnet weights fetch sr_x2" in msg
    assert "pass its path as the weights" in msg
    with pytest.raises(W.WeightsError, match="changed since it was downloaded"):  # the engine's cache too
        W.cached_model("sr_x2", "cpu")
    assert main(["weights", "fetch", "sr_x2"]) == 1
    assert "changed since it was downloaded" in capsys.readouterr().err
    # what the message offers works: the path as it is, or delete and download again
    assert W.load_model(str(cached)).weights_sha256 == hashlib.sha256(other.read_bytes()).hexdigest()
    assert cached.read_bytes() == other.read_bytes() and record.exists()  # nothing deleted
    cached.unlink()
    record.unlink()
    assert main(["weights", "fetch", "sr_x2"]) == 0
    assert W.load_model("sr_x2").weights_sha256 == hashlib.sha256(good.read_bytes()).hexdigest()
    assert server.hits == {"/sr_x2.pth": 2}


def test_a_truncated_cached_download_is_refused_for_what_it_is(server, official_pair):
    shutil.copy(official_pair[0], server.root / "sr_x3.pth")
    cached = W.fetch("sr_x3", progress=False)
    with open(cached, "r+b") as fh:
        fh.truncate(cached.stat().st_size // 2)
    with pytest.raises(W.WeightsError, match="changed since it was downloaded.*truncated, damaged or replaced"):
        W.load_model("sr_x3")


def test_a_downloaded_url_is_checked_against_its_record(server, tmp_path):
    make_checkpoint(server.root / "mine.pth", seed=4)
    url = f"{server.url}/mine.pth"
    cached = W.fetch(url, progress=False)
    make_checkpoint(tmp_path / "x.pth", seed=5)
    shutil.copy(tmp_path / "x.pth", cached)
    with pytest.raises(W.WeightsError, match=f"{cached.name} has changed since it was downloaded"):
        W.load_model(url)


def test_a_damaged_record_is_named(server, official_pair):
    shutil.copy(official_pair[0], server.root / "sr_x4.pth")
    cached = W.fetch("sr_x4", progress=False)
    WF.record_path(cached).write_text("not a hash\n")
    with pytest.raises(W.WeightsError, match=r"record .*sr_x4\.pth\.sha256 is damaged.*Delete both"):
        W.load_model("sr_x4")


def test_a_published_sha256_is_checked_where_one_is_known(server, official_pair, monkeypatch):
    # none is published for v1.0.0 (all None); a mirror or a later release that states one is held to it
    assert set(W.PUBLISHED_SHA256) == set(W.OFFICIAL_ASSETS) and not any(W.PUBLISHED_SHA256.values())
    good, other = official_pair
    shutil.copy(good, server.root / "enhancement_lol.pth")
    monkeypatch.setitem(W.PUBLISHED_SHA256, "enhancement_lol", hashlib.sha256(other.read_bytes()).hexdigest())
    with pytest.raises(W.WeightsError, match="download of .* was not kept: its SHA-256 is .* not the published"):
        W.fetch("enhancement_lol", progress=False)
    assert not W.cached_path("enhancement_lol").exists()
    monkeypatch.setitem(W.PUBLISHED_SHA256, "enhancement_lol", hashlib.sha256(good.read_bytes()).hexdigest())
    assert W.load_model("enhancement_lol").weights_sha256 == W.PUBLISHED_SHA256["enhancement_lol"]
    # a file copied in by hand (no record) is held to the published hash as well
    WF.record_path(W.cached_path("enhancement_lol")).unlink()
    shutil.copy(other, W.cached_path("enhancement_lol"))
    with pytest.raises(W.WeightsError, match="is not the official enhancement_lol checkpoint: its SHA-256"):
        W.load_model("enhancement_lol")


def test_a_hand_copied_file_without_record_is_checked_by_structure(tmp_path, monkeypatch, official_pair):
    # offline users copy the file into the cache: no record, the structural checks apply
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.setattr(download, "_licence_shown", True)
    W.cache_dir().mkdir(parents=True)
    shutil.copy(official_pair[0], W.cached_path("sr_x2"))
    assert W.load_model("sr_x2").config.n_feat == 80
    assert not WF.record_path(W.cached_path("sr_x2")).exists()  # nothing written into the cache


# ---------------------------------------------------------------------- issue 30: listing models
@pytest.fixture
def shipped(tmp_path, monkeypatch):
    folder = tmp_path / "models"
    folder.mkdir()
    for name, seed in (("one", 1), ("two", 2)):
        sd = torch.load(make_checkpoint(tmp_path / f"{name}.src", seed=seed), weights_only=True)
        sd["meta"] = {"task": "denoise", "name": name}
        torch.save(sd, folder / f"{name}.pth")
    monkeypatch.setattr(catalogue, "SHIPPED_DIR", folder)
    catalogue._meta_cache.clear()
    yield folder
    catalogue._meta_cache.clear()


def test_available_weights_reads_each_shipped_file_once(shipped, monkeypatch):
    reads = []
    read = catalogue._read_meta
    monkeypatch.setattr(catalogue, "_read_meta", lambda path: reads.append(Path(path).name) or read(path))
    for _ in range(5):  # the widgets call it on every change
        infos = [i for i in W.available_weights() if i.kind == "shipped"]
    assert [(i.name, i.task) for i in infos] == [("one", "denoise"), ("two", "denoise")]
    assert sorted(reads) == ["one.pth", "two.pth"]
    # a shipped file replaced (an upgrade in place) is read again
    sd = torch.load(shipped / "two.pth", weights_only=True)
    sd["meta"]["task"] = "lowlight"
    torch.save(sd, shipped / "new.tmp")
    os.replace(shipped / "new.tmp", shipped / "two.pth")
    assert [i.task for i in W.available_weights() if i.kind == "shipped"] == ["denoise", "lowlight"]
    assert sorted(reads) == ["one.pth", "two.pth", "two.pth"]
    mine = W.shipped_meta("one")
    mine["task"] = "changed by a caller"  # a copy, nested values too: the cache stays right
    mine.setdefault("nested", {})["x"] = 1
    assert W.shipped_meta("one") == {"task": "denoise", "name": "one"}


def test_a_fine_tuning_resume_file_is_never_listed_as_a_model(shipped, tmp_path, capsys):
    # finetune writes NAME.pth and its resume state NAME.pth.state.pth side by side
    shutil.copy(shipped / "one.pth", shipped / "one.pth.state.pth")
    (shipped / "one.pth.sha256").write_text("0" * 64 + "  one.pth\n")
    assert [p.name for p in W.checkpoint_files(shipped)] == ["one.pth", "two.pth"]
    assert list(W.shipped_models()) == ["one", "two"]
    assert W.checkpoint_files(tmp_path / "missing") == []
    with pytest.raises(W.WeightsError, match=r"it holds one\.pth, two\.pth: pass one of them") as err:
        W.load_model(str(shipped))
    assert "state" not in str(err.value)


def test_the_denoise_widget_lists_fine_tuned_models_but_not_their_resume_files(tmp_path, monkeypatch):
    """The Denoise widget's model list (issue 30): it globbed ``*.pth`` and offered NAME.pth.state.pth."""
    pytest.importorskip("magicgui")
    from napari_mirnet.widgets import weights_choices

    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path))
    make_checkpoint(tmp_path / "mine.pth")
    shutil.copy(tmp_path / "mine.pth", tmp_path / "mine.pth.state.pth")
    labels = [label for label, _ in weights_choices("denoise")]
    assert "mine (fine-tuned)" in labels
    assert not [label for label in labels if "state" in label]


def test_listing_the_models_imports_no_torch(tmp_path):
    """The catalogue (what `weights list`, `weights path` and the widgets' lists read) never imports torch:
    the shipped files' metadata comes from their pickle without it (the old weights.py imported torch at
    its top and read every shipped file with torch.load)."""
    code = (
        "import sys\n"
        "from napari_mirnet.weights import available_weights, cached_path, shipped_models, user_models\n"
        "infos = available_weights()\n"
        "assert [i.task for i in infos if i.name == 'small-sr-x2'] == ['super_resolution'], infos\n"
        "assert shipped_models() and cached_path('sr_x2') and user_models() == {}\n"
        "print('torch' in sys.modules)\n"
    )
    env = {**os.environ, "NAPARI_MIRNET_MODELS": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=SAFETY_S)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_light_metadata_reader_agrees_with_torch_or_leaves_the_file_to_it(tmp_path):
    for name, path in W.shipped_models().items():
        assert peek_meta(path.read_bytes()) == torch.load(path, weights_only=True)["meta"], name
    sd = torch.load(make_checkpoint(tmp_path / "src.pth"), weights_only=True)["params"]
    plain = {"task": "denoise", "scale": 2, "tags": {"a", "b"}, "raw": b"\x00\xff", "pair": (1, 2.5), "none": None}
    for key in ("params", "params_ema", "state_dict", "model"):
        torch.save({key: sd, "meta": plain}, tmp_path / "m.pth")
        assert peek_meta((tmp_path / "m.pth").read_bytes()) == plain
    torch.save(sd, tmp_path / "bare.pth")  # a bare state dict: no meta
    assert peek_meta((tmp_path / "bare.pth").read_bytes()) == {}
    # what it cannot vouch for is left to torch (None): a tensor in the metadata, a name torch refuses,
    # the legacy format, no state dict, not a checkpoint at all
    odd = {
        "tensor-meta": {"params": sd, "meta": {"mean": torch.ones(1)}},
        "frozenset": {"params": sd, "meta": {"f": frozenset([1])}},
        "no-state-dict": {"meta": plain, "x": torch.ones(1)},
        "a-list": [torch.ones(1)],
    }
    for name, obj in odd.items():
        torch.save(obj, tmp_path / f"{name}.pth")
        assert peek_meta((tmp_path / f"{name}.pth").read_bytes()) is None, name
    torch.save({"params": sd, "meta": plain}, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    assert peek_meta((tmp_path / "legacy.pth").read_bytes()) is None
    assert peek_meta(b"<html>login</html>") is None


def test_a_shipped_file_the_light_reader_leaves_is_read_by_torch_once(shipped, monkeypatch):
    sd = torch.load(shipped / "two.pth", weights_only=True)
    sd["meta"]["mean"] = torch.ones(1)  # a tensor in the metadata: torch's reader is needed
    torch.save(sd, shipped / "two.pth")
    parses = []
    parse = catalogue.parse
    monkeypatch.setattr(catalogue, "parse", lambda *a: parses.append(a[1].name) or parse(*a))
    for _ in range(3):
        assert [i.task for i in W.available_weights() if i.kind == "shipped"] == ["denoise", "denoise"]
    assert parses == ["two.pth"]
    assert torch.equal(W.shipped_meta("two")["mean"], torch.ones(1))
    # a broken shipped file is reported as the loader reports it
    (shipped / "one.pth").write_bytes(b"<html>not found</html>")
    with pytest.raises(W.WeightsError, match="HTML page"):
        W.available_weights()


def test_the_catalogue_never_lists_a_resume_file(shipped, tmp_path):
    """One rule for every list of models: the shipped ones, `available_weights`, a folder of fine-tuned models."""
    for folder in (shipped, tmp_path / "mine"):
        folder.mkdir(exist_ok=True)
        shutil.copy(shipped / "one.pth", folder / "tuned.pth")
        for resume in ("tuned.pth.state.pth", "other.PTH.STATE.PTH"):
            shutil.copy(shipped / "one.pth", folder / resume)
        (folder / "tuned.pth.sha256").write_text("0" * 64 + "  tuned.pth\n")
    assert list(W.shipped_models()) == ["one", "tuned", "two"]
    assert [i.name for i in W.available_weights() if i.kind == "shipped"] == ["one", "tuned", "two"]
    assert W.user_models(tmp_path / "mine") == {"tuned": tmp_path / "mine" / "tuned.pth"}
    assert W.user_models(tmp_path / "missing") == {}
    assert [W.is_model_file(n) for n in ("a.pth", "a.PT", "a.pth.state.pth", "a.pth.sha256", ".pth")] == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_shipped_models_say_their_scale(monkeypatch, tmp_path):
    infos = {i.name: i for i in W.available_weights()}
    assert infos["small-sr-x2"].scale == 2 and infos["small-denoise-rgb"].scale is None
    assert infos["sr_x2"].scale is None  # official: the name says it, the catalogue does not guess
    monkeypatch.setenv("NAPARI_MIRNET_MODELS", str(tmp_path / "models"))
    assert W.models_dir() == tmp_path / "models"
