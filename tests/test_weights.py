"""Checkpoint loading: formats, downloads from a local HTTP server, caching and clear errors."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import WeightsServer, make_checkpoint

from napari_mirnet import weights as W
from napari_mirnet.cli import main
from napari_mirnet.model import MIRNetV2
from napari_mirnet.weights import checkpoint, download
from napari_mirnet.weights import files as WF


@pytest.fixture
def server(weights_server):
    return weights_server


def _cached_files():
    # hidden files included: a download's temporary file must not be left behind either
    return sorted(p.name for p in W.cache_dir().iterdir()) if W.cache_dir().exists() else []


@pytest.fixture(scope="session")
def official_file(tmp_path_factory):
    """A random checkpoint with the official 3 -> 3 structure (n_feat 80, 2 MRBs: 23 MB)."""
    return make_checkpoint(tmp_path_factory.mktemp("official") / "real.pth", seed=7, n_feat=80, n_mrb=2)


@pytest.fixture(scope="session")
def official_dual_file(tmp_path_factory):
    """A random checkpoint with the official dual-pixel 6 -> 3 structure."""
    return make_checkpoint(
        tmp_path_factory.mktemp("official") / "dual.pth", seed=8, n_feat=80, n_mrb=2, in_channels=6, dual_pixel=True
    )


def test_official_asset_downloads_once_with_progress_and_licence(server, capfd, official_file):
    shutil.copy(official_file, server.root / "real_denoising.pth")
    with pytest.warns(W.OfficialWeightsNotice, match="non-commercial"):
        model = W.load_model("real_denoising")
    assert server.hits == {"/real_denoising.pth": 1}
    assert "100%" in capfd.readouterr().err  # the tqdm progress bar
    # the download and the SHA-256 recorded when it came, in sha256sum's format
    assert _cached_files() == ["real_denoising.pth", "real_denoising.pth.sha256"]
    record = (W.cache_dir() / "real_denoising.pth.sha256").read_text()
    assert record == f"{hashlib.sha256(Path(official_file).read_bytes()).hexdigest()}  real_denoising.pth\n"
    assert not model.training and model.config.n_feat == 80

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the licence is shown once, not on every load
        again = W.load_model("real_denoising")
    assert server.hits == {"/real_denoising.pth": 1}  # served from the cache
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_url_is_downloaded_into_the_cache(server):
    make_checkpoint(server.root / "mine.pth", seed=4, key="params_ema")
    model = W.load_model(f"{server.url}/mine.pth")
    W.load_model(f"{server.url}/mine.pth")
    assert server.hits == {"/mine.pth": 1}
    assert isinstance(model, MIRNetV2)


@pytest.mark.parametrize("key", ["params", "params_ema", "state_dict", None])
def test_state_dict_conventions_and_module_prefix(tmp_path, key):
    torch.manual_seed(0)
    model = MIRNetV2(n_feat=16, n_mrb=1)
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    path = tmp_path / "ckpt.pth"
    torch.save(sd if key is None else {key: sd, "iter": 5}, path)
    loaded = W.load_model(path)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_moving_average_is_preferred_to_raw_params(tmp_path):
    torch.manual_seed(0)
    raw, avg = MIRNetV2(n_feat=16, n_mrb=1), MIRNetV2(n_feat=16, n_mrb=1)  # two different inits
    path = tmp_path / "basicsr.pth"
    torch.save({"params": raw.state_dict(), "params_ema": avg.state_dict()}, path)
    loaded = W.load_model(path)
    for k, v in avg.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


def test_pickled_code_is_never_executed(tmp_path):
    class Evil:
        def __reduce__(self):
            return (exec, ("import pathlib; pathlib.Path('PWNED').touch()",))

    path = tmp_path / "evil.pth"
    torch.save({"params": Evil()}, path)
    with pytest.raises(W.WeightsError, match="not safe to unpickle|corrupt"):
        W.load_model(path)
    assert not (tmp_path / "PWNED").exists()


def _served_bad(server, name, payload: bytes):
    (server.root / f"{name}.pth").write_bytes(payload)


def test_truncated_download_is_reported_and_not_cached(server, tmp_path):
    good = tmp_path / "good.pth"
    make_checkpoint(good)
    data = good.read_bytes()
    _served_bad(server, "sr_x2", data[: len(data) // 2])
    with pytest.warns(UserWarning), pytest.raises(W.WeightsError, match="truncated") as err:
        W.load_model("sr_x2")
    assert "was not kept" in str(err.value)
    assert _cached_files() == []


def test_html_page_saved_as_pth_is_reported_and_not_cached(server):
    _served_bad(server, "sr_x3", b"<!DOCTYPE html><html><body>Rate limit exceeded</body></html>")
    with pytest.warns(UserWarning), pytest.raises(W.WeightsError, match="HTML page"):
        W.load_model("sr_x3")
    assert _cached_files() == []


def test_missing_and_extra_keys_are_named(server):
    torch.manual_seed(0)
    sd = MIRNetV2(n_feat=16, n_mrb=1).state_dict()
    sd.pop("body.2.body.0.dau_mid.gcnet.conv_mask.weight")
    sd["body.9.extra.weight"] = torch.zeros(3)
    torch.save({"params": sd}, server.root / "sr_x4.pth")
    with pytest.warns(UserWarning), pytest.raises(W.WeightsError) as err:
        W.load_model("sr_x4")
    msg = str(err.value)
    assert "1 missing key(s), e.g. body.2.body.0.dau_mid.gcnet.conv_mask.weight" in msg
    assert "1 unexpected key(s), e.g. body.9.extra.weight" in msg
    assert _cached_files() == []


def test_wrong_shape_is_named(server):
    torch.manual_seed(0)
    sd = MIRNetV2(n_feat=16, n_mrb=1).state_dict()
    sd["body.1.body.0.conv_out.weight"] = torch.zeros(16, 16, 3, 3)
    torch.save({"params": sd}, server.root / "enhancement_lol.pth")
    with (
        pytest.warns(UserWarning),
        pytest.raises(
            W.WeightsError,
            match=r"body\.1\.body\.0\.conv_out\.weight has shape \(16, 16, 3, 3\), expected \(16, 16, 1, 1\)",
        ),
    ):
        W.load_model("enhancement_lol")
    assert _cached_files() == []


def test_offline_error_says_where_to_put_the_file(monkeypatch):
    srv = WeightsServer(".")
    url = srv.url
    srv.close()  # nothing listens there any more: a refused connection, as offline
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", url)
    monkeypatch.setattr(download, "_licence_shown", True)
    with pytest.raises(W.WeightsError) as err:
        W.load_model("enhancement_fivek")
    msg = str(err.value)
    assert "could not download" in msg and str(W.cache_dir() / "enhancement_fivek.pth") in msg
    assert _cached_files() == []


def test_unknown_name_lists_the_known_ones():
    with pytest.raises(W.WeightsError, match="real_denoising"):
        W.load_model("no-such-model")


def test_cache_dir_env_override(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_MIRNET_CACHE", str(tmp_path / "elsewhere"))
    assert W.cache_dir() == tmp_path / "elsewhere"
    monkeypatch.delenv("NAPARI_MIRNET_CACHE")
    assert "napari-mirnet" in str(W.cache_dir())


def test_cuda_request_without_gpu_is_explained():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from napari_mirnet.devices import DeviceError, resolve_device

    with pytest.raises(DeviceError, match="sees no CUDA GPU"):
        resolve_device("cuda")


# ------------------------------------------------------------------ hostile cases (issue 15)
def test_a_users_bad_checkpoint_in_the_cache_is_never_deleted(tmp_path):
    # a shared $NAPARI_MIRNET_CACHE may hold anyone's files; failing validation must not remove them
    torch.manual_seed(0)
    sd = MIRNetV2(n_feat=16, n_mrb=1).state_dict()
    sd.pop("body.2.body.0.dau_mid.gcnet.conv_mask.weight")
    W.cache_dir().mkdir(parents=True)
    mine = W.cache_dir() / "mine.pth"
    torch.save({"params": sd}, mine)
    broken = W.cache_dir() / "broken.pth"
    broken.write_bytes(b"\x80\x02not a checkpoint")
    before = {p.name: p.read_bytes() for p in (mine, broken)}
    with pytest.raises(W.WeightsError, match="missing key"):
        W.load_model(mine)
    with pytest.raises(W.WeightsError, match="corrupt"):
        W.load_model(broken)
    assert {p.name: p.read_bytes() for p in (mine, broken)} == before


def test_a_failed_download_removes_only_its_own_temporary_file(server, tmp_path):
    W.cache_dir().mkdir(parents=True)
    (W.cache_dir() / "notes.pth").write_bytes(b"someone else's")
    (server.root / "bad.pth").write_bytes(b"\x80\x02garbage")
    with pytest.raises(W.WeightsError, match="was not kept"):
        W.load_model(f"{server.url}/bad.pth")
    assert _cached_files() == ["notes.pth"]


def _with_values(path, **values):
    torch.manual_seed(0)
    sd = MIRNetV2(n_feat=16, n_mrb=1).state_dict()
    for key, (index, value) in values.items():
        sd[key.replace("__", ".")].view(-1)[index] = value
    torch.save({"params": sd}, path)
    return path


def test_nan_or_inf_in_a_checkpoint_is_refused_naming_tensors_and_file(tmp_path, server):
    path = _with_values(
        tmp_path / "diverged.pth", conv_in__weight=(0, float("nan")), conv_out__weight=(3, float("-inf"))
    )
    with pytest.raises(W.WeightsError) as err:
        W.load_model(path)
    msg = str(err.value)
    assert str(path) in msg and "non-finite" in msg
    assert "conv_in.weight (1 NaN)" in msg and "conv_out.weight (1 Inf)" in msg
    assert path.exists()
    # a download holding NaN never reaches the cache
    shutil.copy(path, server.root / "nan.pth")
    with pytest.raises(W.WeightsError, match=r"conv_in\.weight \(1 NaN\)"):
        W.load_model(f"{server.url}/nan.pth")
    assert _cached_files() == []


def test_a_hand_copied_official_file_is_checked_and_kept(tmp_path, monkeypatch, official_file, official_dual_file):
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", "http://127.0.0.1:9")  # offline: nothing may be fetched
    monkeypatch.setattr(download, "_licence_shown", True)
    W.cache_dir().mkdir(parents=True)
    # the official structure, copied in by hand, works offline
    shutil.copy(official_file, W.cache_dir() / "sr_x2.pth")
    assert W.load_model("sr_x2").config.n_feat == 80
    shutil.copy(official_dual_file, W.cache_dir() / "dual_pixel_defocus_deblurring.pth")
    assert W.load_model("dual_pixel_defocus_deblurring").config.in_channels == 6

    # any other loadable file under an official name is refused, with what to do, and kept
    wrong = W.cache_dir() / "real_denoising.pth"
    make_checkpoint(wrong)
    with pytest.raises(W.WeightsError) as err:
        W.load_model("real_denoising")
    msg = str(err.value)
    assert "structure of the official real_denoising" in msg
    assert "n_feat 16 (official: 80)" in msg and "123,472 parameters (official: 5,858,560)" in msg
    assert f"delete {wrong}" in msg and "napari-mirnet weights fetch real_denoising" in msg
    assert W.official_url("real_denoising") in msg
    assert wrong.exists()
    # the 3 -> 3 model under the dual-pixel name
    shutil.copy(official_file, W.cache_dir() / "dual_pixel_defocus_deblurring.pth")
    with pytest.raises(W.WeightsError, match=r"in_channels 3 \(official: 6\)"):
        W.load_model("dual_pixel_defocus_deblurring")
    # the official structure with a NaN is refused too
    sd = torch.load(official_file, weights_only=True)
    sd["params"]["body.0.body.0.dau_top.body.0.weight"].view(-1)[5] = float("nan")
    torch.save(sd, W.cache_dir() / "sr_x4.pth")
    with pytest.raises(W.WeightsError, match=r"dau_top\.body\.0\.weight \(1 NaN\).*delete"):
        W.load_model("sr_x4")
    # `weights fetch` checks what is there, too, instead of printing it as fine
    assert main(["weights", "fetch", "real_denoising"]) == 1
    assert wrong.exists()


def test_file_urls_are_local_files(tmp_path, capsys, tiny_weights):
    from pathlib import Path

    url = Path(tiny_weights).as_uri()
    assert main(["weights", "fetch", url]) == 0
    assert capsys.readouterr().out.strip() == tiny_weights
    assert W.load_model(url).config.n_feat == 16
    assert _cached_files() == []  # used in place, not copied
    missing = (tmp_path / "nowhere.pth").as_uri()
    assert main(["weights", "fetch", missing, "file://otherhost/x.pth", "ftp://example.org/x.pth"]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("napari-mirnet: error:") == 3
    assert f"weights file {tmp_path / 'nowhere.pth'} does not exist" in err
    assert "another host (otherhost)" in err and "only http://, https:// and file://" in err


def test_a_folder_given_as_weights_is_named_as_one(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    with pytest.raises(W.WeightsError, match="is a folder, not a checkpoint file; it holds no .pth file"):
        W.load_model(folder)
    make_checkpoint(folder / "best.pth")
    make_checkpoint(folder / "last.pt")
    (folder / "notes.txt").write_text("x")
    with pytest.raises(W.WeightsError) as err:
        W.load_model(folder)
    assert f"it holds best.pth, last.pt: pass one of them, e.g. {folder / 'best.pth'}" in str(err.value)
    assert main(["weights", "path", str(folder)]) == 1
    assert "is a folder" in capsys.readouterr().err


def test_weights_path_says_where_a_missing_official_file_goes(capsys):
    assert main(["weights", "path", "sr_x3"]) == 1
    err = capsys.readouterr().err
    assert str(W.cache_dir() / "sr_x3.pth") in err
    assert "napari-mirnet weights fetch sr_x3" in err and W.official_url("sr_x3") in err


def test_cli_shows_the_licence_as_one_plain_note(server, capsys, monkeypatch, official_file):
    shutil.copy(official_file, server.root / "enhancement_lol.pth")
    assert main(["weights", "fetch", "enhancement_lol"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(W.cache_dir() / "enhancement_lol.pth")
    notes = [line for line in err.splitlines() if "Academic Public License" in line]
    assert notes == [f"napari-mirnet: note: {W.OFFICIAL_LICENCE}"]
    assert "UserWarning" not in err and "warnings.warn" not in err
    # the Python API keeps a warning, of its own category
    monkeypatch.setattr(download, "_licence_shown", False)
    with pytest.warns(W.OfficialWeightsNotice):
        W.fetch("enhancement_lol")


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o002, 0o664), (0o077, 0o600)])
def test_downloads_get_the_mode_the_umask_gives(server, umask, mode):
    make_checkpoint(server.root / "m.pth")
    old = os.umask(umask)
    try:
        path = W.fetch(f"{server.url}/m.pth", progress=False)
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
    assert WF.record_path(path).stat().st_mode & 0o777 == mode  # others can check it too
    assert _cached_files() == [path.name, f"{path.name}.sha256"]


def _as_other_user(script: str, env: dict) -> subprocess.CompletedProcess:
    # root without CAP_DAC_OVERRIDE/CAP_DAC_READ_SEARCH is held to the files' permission bits like
    # any user: files owned by uid 1000 are someone else's, read through their "other" bits
    return subprocess.run(
        [
            "setpriv",
            "--bounding-set=-dac_override,-dac_read_search",
            "--",
            sys.executable,
            "-c",
            textwrap.dedent(script),
        ],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="emulating a second user needs root and setpriv",
)
def test_shared_read_only_cache_works_for_another_user(server, tmp_path, official_file):
    shared = tmp_path / "shared-weights"
    shutil.copy(official_file, server.root / "real_denoising.pth")
    # the caretaker fills the cache as docs/cluster.md says (umask 022, weights fetch)
    old = os.umask(0o022)
    try:
        os.environ["NAPARI_MIRNET_CACHE"] = str(shared)  # restored by conftest's monkeypatch
        assert main(["weights", "fetch", "real_denoising"]) == 0
    finally:
        os.umask(old)
    target = shared / "real_denoising.pth"
    assert target.stat().st_mode & 0o777 == 0o644
    for p in (shared, target):
        os.chown(p, 1000, 1000)  # owned by the caretaker: this test's user only has "other" rights
    shared.chmod(0o755)  # read-only for everyone else
    before = sorted(os.listdir(shared)), target.stat().st_mtime_ns
    env = {"NAPARI_MIRNET_CACHE": str(shared), "NAPARI_MIRNET_BASE_URL": "http://127.0.0.1:9"}
    script = """
        import warnings
        warnings.simplefilter("ignore")
        import napari_mirnet.weights as W
        from napari_mirnet.cli import main
        print("loaded", W.load_model("real_denoising").config.n_feat)
        print("path rc", main(["weights", "path", "real_denoising"]))
        print("fetch rc", main(["weights", "fetch", "real_denoising"]))
        try:
            W.load_model("sr_x2")
        except W.WeightsError as err:
            print("missing:", err)
    """
    r = _as_other_user(script, env)
    assert r.returncode == 0, r.stderr
    assert "loaded 80" in r.stdout and "path rc 0" in r.stdout and "fetch rc 0" in r.stdout
    assert f"missing: cannot download http://127.0.0.1:9/sr_x2.pth into the weights cache {shared}" in r.stdout
    assert "Permission denied" in r.stdout and "weights fetch sr_x2" in r.stdout
    assert (sorted(os.listdir(shared)), target.stat().st_mtime_ns) == before  # nothing written

    # a private file (what a plain download used to leave) is named with the fix, not a traceback
    target.chmod(0o600)
    r = _as_other_user(
        "import napari_mirnet.weights as W\ntry:\n    W.load_model('real_denoising')\n"
        "except W.WeightsError as err:\n    print('refused:', err)\n",
        env,
    )
    assert f"refused: cannot read {target}: permission denied" in r.stdout and "chmod a+r" in r.stdout, r.stderr
    assert target.exists()


def test_empty_file_zip_of_other_things_symlink_loop_and_fifo(tmp_path):
    empty = tmp_path / "empty.pth"
    empty.touch()
    with pytest.raises(W.WeightsError, match="is empty"):
        W.load_model(empty)
    archive = tmp_path / "photos.pth"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("readme.txt", "hello")
        zf.writestr("img.png", b"\x89PNG")
    with pytest.raises(
        W.WeightsError, match=r"zip archive but not a PyTorch checkpoint \(it holds readme\.txt, img\.png\)"
    ):
        W.load_model(archive)
    loop_a, loop_b = tmp_path / "a.pth", tmp_path / "b.pth"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    with pytest.raises(W.WeightsError, match="symbolic link that leads nowhere"):
        W.load_model(loop_a)
    fifo = tmp_path / "pipe.pth"
    os.mkfifo(fifo)
    with pytest.raises(W.WeightsError, match="not a regular file"):  # refused, never opened (no hang)
        W.load_model(fifo)
    with pytest.raises(W.WeightsError, match="holds no state dict"):
        torch.save([1, 2, 3], tmp_path / "list.pth")
        W.load_model(tmp_path / "list.pth")
    with pytest.raises(W.WeightsError, match=r"weights file .*nothere\.pth does not exist"):
        W.load_model(tmp_path / "nothere.pth")


def test_huge_files_and_declared_shapes_are_refused_before_reading(tmp_path, server, monkeypatch):
    huge = tmp_path / "stack.pth"
    with open(huge, "wb") as fh:
        fh.truncate(W.MAX_CHECKPOINT_BYTES + 1)  # sparse: no disk space used
    with pytest.raises(W.WeightsError, match="more than any MIRNet-v2 checkpoint"):
        W.load_model(huge)
    # a small file can declare a 4000-feature network (30 GB) with stride-0 tensors: refused unbuilt
    torch.manual_seed(0)
    sd = MIRNetV2(n_feat=16, n_mrb=1).state_dict()
    sd["conv_in.weight"] = torch.zeros(1).expand(4000, 3, 3, 3)
    sd["body.0.body.0.dau_mid.body.0.weight"] = torch.zeros(1).expand(6000, 4000, 1, 1)
    torch.save({"params": sd}, tmp_path / "bomb.pth")
    assert (tmp_path / "bomb.pth").stat().st_size < 1 << 20
    with pytest.raises(W.WeightsError, match="describes a MIRNet-v2 of 7,602,292,000 parameters"):
        W.load_model(tmp_path / "bomb.pth")
    # an oversized download is stopped, and nothing is cached
    make_checkpoint(server.root / "big.pth")
    monkeypatch.setattr(checkpoint, "MAX_CHECKPOINT_BYTES", 1000)
    with pytest.raises(W.WeightsError, match="more than any MIRNet-v2 checkpoint.*not downloaded"):
        W.load_model(f"{server.url}/big.pth")
    assert _cached_files() == []


def test_http_errors_and_urls_without_a_file_name(server):
    with pytest.raises(W.WeightsError, match=r"answered HTTP 404 Not Found; check the address"):
        W.load_model(f"{server.url}/gone.pth")
    with (
        pytest.warns(W.OfficialWeightsNotice),
        pytest.raises(W.WeightsError, match=r"HTTP 404.*NAPARI_MIRNET_BASE_URL"),
    ):
        W.load_model("sr_x4")  # the mirror lacks it
    # a URL with no file name (a directory listing here) is an HTML page, not a checkpoint
    with pytest.raises(W.WeightsError, match="HTML page"):
        W.load_model(f"{server.url}/")
    assert _cached_files() == []
    # whatever the URL, its cache file stays inside the cache, with a plain name
    for url in (f"{server.url}/", f"{server.url}/..%2F..%2Fetc%2Fpasswd", "https://h/" + "x" * 400 + ".pth"):
        path = W.cached_path(url)
        assert path.parent == W.cache_dir() and len(path.name) < 100 and not path.name.startswith(".")
