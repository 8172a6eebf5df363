"""Shared fixtures: tiny real MIRNet-v2 checkpoints in the official format."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
import torch

from napari_mirnet.model import MIRNetConfig, MIRNetV2

#: The one limit for anything a test waits on (a subprocess, a worker, a Qt signal). It is a safety net
#: against hangs, never a speed check: on a 2-core machine at load 15 the suite ran 10x slower than on a
#: quiet one, and a test must fail because the behaviour is wrong, not because the machine is slow.
SAFETY_S = 1800
SAFETY_MS = SAFETY_S * 1000


def make_checkpoint(path, *, seed=0, identity=False, key="params", **config) -> str:
    """Save a small random MIRNet-v2 as ``{key: state_dict}``; ``identity`` zeroes conv_out.

    With conv_out zeroed the global residual makes the network an exact identity, which lets the
    pre/post-processing be checked bit for bit through a real model.
    """
    torch.manual_seed(seed)
    cfg = MIRNetConfig(**{"n_feat": 16, "n_mrb": 1, **config})
    model = MIRNetV2(cfg)
    if identity:
        torch.nn.init.zeros_(model.conv_out.weight)
    sd = model.state_dict()
    torch.save(sd if key is None else {key: sd}, path)
    return str(path)


@pytest.fixture
def one_thread():
    """torch on one thread while the test runs (same reduction order run after run; fair CPU budgets)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> str:
    """A random 3->3 MIRNet-v2 with n_feat=16, one MRB per RRG."""
    return make_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pth")


@pytest.fixture(scope="session")
def identity_weights(tmp_path_factory) -> str:
    return make_checkpoint(tmp_path_factory.mktemp("w") / "identity.pth", identity=True)


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    # no test may read or fill the user's real weights cache
    monkeypatch.setenv("NAPARI_MIRNET_CACHE", str(tmp_path / "weights-cache"))


@pytest.fixture(scope="session")
def tiny_dual_weights(tmp_path_factory) -> str:
    """A random 6->3 dual-pixel MIRNet-v2 with n_feat=16, one MRB per RRG."""
    return make_checkpoint(tmp_path_factory.mktemp("w") / "tiny_dual.pth", in_channels=6, dual_pixel=True)


class WeightsServer:
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

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.root = root
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """Official-name downloads served from ``tmp_path/served`` (``$NAPARI_MIRNET_BASE_URL``); the licence
    notice not yet shown in this process."""
    from napari_mirnet.weights import download

    root = tmp_path / "served"
    root.mkdir()
    srv = WeightsServer(root)
    monkeypatch.setenv("NAPARI_MIRNET_BASE_URL", srv.url)
    monkeypatch.setattr(download, "_licence_shown", False)
    yield srv
    srv.close()


@pytest.fixture(scope="module")
def gray_identity(tmp_path_factory) -> str:
    """A 1->1 MIRNet-v2 (n_feat 16) that starts as the identity: its PSNR is the noisy input's."""
    return make_checkpoint(tmp_path_factory.mktemp("w") / "gray_id.pth", identity=True, in_channels=1, out_channels=1)


def toy(n=3, size=96, sigma=0.1, seed=0):
    """``n`` smooth 2-D planes (clean) and the same with Gaussian noise of ``sigma`` (noisy), float32."""
    yy, xx = np.mgrid[0:size, 0:size]
    clean = np.stack([0.5 + 0.3 * np.sin(xx / 9 + k) * np.cos(yy / 7) for k in range(n)]).astype(np.float32)
    noisy = clean + np.random.default_rng(seed).normal(0, sigma, clean.shape).astype(np.float32)
    return clean, noisy.astype(np.float32)


@pytest.fixture(scope="session")
def http_folder(tmp_path_factory):
    """A folder served over HTTP with Range on 127.0.0.1: (folder, base URL, bytes served per path)."""
    from servers import serve_folder

    folder = tmp_path_factory.mktemp("http")
    server, base, served = serve_folder(folder)
    try:
        yield folder, base, served
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server that checks signatures: (endpoint, key id, secret)."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from servers import start_moto

    proc, endpoint, key, secret = start_moto(tmp_path_factory.mktemp("moto"))
    try:
        yield endpoint, key, secret
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The S3 server with this test's credentials in the environment; returns (endpoint, storage_options)."""
    endpoint, key, secret = s3_server
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    # max_concurrency=1: s3fs otherwise asks a missing key's size, then lists its "folder"; moto 5.2.1
    # miscomputes the signature of a listing whose query holds "/" (Prefix="a/", Delimiter="/")
    return endpoint, {"client_kwargs": {"endpoint_url": endpoint}, "max_concurrency": 1}


#: Any key/secret works on the open moto server; these are the tests' (never a real credential).
OPEN_KEY, OPEN_SECRET = "open-key", "open-secret"


@pytest.fixture(scope="session")
def s3_open(tmp_path_factory):
    """moto's S3 server WITHOUT signature checks (listing, writing, removing stores work): its endpoint."""
    pytest.importorskip("moto.server")
    pytest.importorskip("s3fs")
    from servers import start_moto_open

    proc, endpoint = start_moto_open(tmp_path_factory.mktemp("moto-open"))
    try:
        yield endpoint
    finally:
        proc.terminate()
        proc.wait(timeout=30)


class S3Bucket(tuple):
    """``(endpoint, storage_options)``, plus ``.bucket`` (a fresh, existing bucket) and ``.url(key)``."""

    bucket: str

    def __new__(cls, endpoint: str, storage_options: dict, bucket: str):
        self = super().__new__(cls, (endpoint, storage_options))
        self.bucket = bucket
        return self

    @property
    def endpoint(self) -> str:
        return self[0]

    @property
    def storage_options(self) -> dict:
        return self[1]

    def url(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{key}"

    def client(self):
        """A boto3 S3 client on the server (for uploading test data with put_object)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self[0],
            region_name="us-east-1",
            aws_access_key_id=OPEN_KEY,
            aws_secret_access_key=OPEN_SECRET,
        )


@pytest.fixture
def s3_bucket(s3_open, request) -> S3Bucket:
    """A fresh bucket on the open moto server: unpacks as ``(endpoint, storage_options)``; ``.bucket``,
    ``.url(key)`` -> ``s3://bucket/key``, ``.client()`` -> boto3. The options carry the key/secret, so the
    user's AWS environment plays no part."""
    import re
    import uuid

    name = re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:30].strip("-")
    bucket = f"{name}-{uuid.uuid4().hex[:8]}"
    options = {
        "key": OPEN_KEY,
        "secret": OPEN_SECRET,
        "client_kwargs": {"endpoint_url": s3_open, "region_name": "us-east-1"},
    }
    out = S3Bucket(s3_open, options, bucket)
    out.client().create_bucket(Bucket=bucket)
    return out


@pytest.fixture
def flaky_folder(tmp_path):
    """A folder served by a Range server that fails chosen requests (tests/servers.py FlakyHandler):
    (folder, base URL, bytes served per path, rules: append dicts to make requests fail)."""
    from servers import serve_flaky

    folder = tmp_path / "flaky"
    folder.mkdir()
    server, base, served, rules = serve_flaky(folder)
    try:
        yield folder, base, served, rules
    finally:
        server.shutdown()
        server.server_close()
