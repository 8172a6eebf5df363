"""Checkpoint loading: formats, downloads from a local HTTP server, caching and clear errors."""

from __future__ import annotations

import functools
import http.server
import threading
import warnings

import pytest
import torch

from conftest import make_checkpoint
from napari_mirnet import weights as W
from napari_mirnet.model import MIRNetV2


class _Server:
    """A real HTTP server on 127.0.0.1 serving a folder, counting the requests per path."""

    def __init__(self, root):
        self.hits: dict[str, int] = {}
        hits = self.hits

        class Handler(http.server.SimpleHTTPRequestHandler):
            def do_GET(self):
                hits[self.path] = hits.get(self.path, 0) + 1
                super().do_GET()

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(
            ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
        )
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    root = tmp_path / "served"
    root.mkdir()
    srv = _Server(root)
    srv.root = root
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", srv.url)
    monkeypatch.setattr(W, "_licence_shown", False)
    yield srv
    srv.close()


def _cached_files():
    return sorted(p.name for p in W.cache_dir().glob("*")) if W.cache_dir().exists() else []


def test_official_asset_downloads_once_with_progress_and_licence(server, capfd):
    make_checkpoint(server.root / "real_denoising.pth", seed=3)
    with pytest.warns(UserWarning, match="non-commercial"):
        model = W.load_model("real_denoising")
    assert server.hits == {"/real_denoising.pth": 1}
    assert "100%" in capfd.readouterr().err  # pooch's tqdm progress bar
    assert _cached_files() == ["real_denoising.pth"]
    assert not model.training and model.config.n_feat == 16

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
    with pytest.warns(UserWarning), pytest.raises(W.WeightsError, match="truncated"):
        W.load_model("sr_x2")
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
    with pytest.warns(UserWarning), pytest.raises(W.WeightsError, match=r"body\.1\.body\.0\.conv_out\.weight has shape \(16, 16, 3, 3\), expected \(16, 16, 1, 1\)"):
        W.load_model("enhancement_lol")
    assert _cached_files() == []


def test_offline_error_says_where_to_put_the_file(monkeypatch):
    srv = _Server(".")
    url = srv.url
    srv.close()  # nothing listens there any more: a refused connection, as offline
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", url)
    monkeypatch.setattr(W, "_licence_shown", True)
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
    with pytest.raises(W.WeightsError, match="sees no CUDA GPU"):
        W.resolve_device("cuda")
