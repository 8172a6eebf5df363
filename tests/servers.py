"""Real servers on 127.0.0.1 for the remote-input tests: an HTTP server with Range, and moto's S3 server."""

from __future__ import annotations

import collections
import functools
import http.server
import os
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.request


class RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; honours ``Range: bytes=a-b`` (206, Content-Range) and counts the bytes sent per path."""

    served: collections.Counter  # set per server class (see serve_folder)

    def log_message(self, *args):  # quiet: the test output is for the tests
        pass

    def send_head(self):
        path = self.translate_path(self.path)
        rng = self.headers.get("Range")
        if rng is None or os.path.isdir(path) or not os.path.isfile(path):
            return super().send_head()
        size = os.path.getsize(path)
        if not re.fullmatch(r"bytes=(\d+-\d*|-\d+)", rng.strip()):  # several ranges, or none we read:
            return super().send_head()  # the whole file, as RFC 9110 allows (never a dropped connection)
        start, _, end = rng.strip().removeprefix("bytes=").partition("-")
        if start == "":  # a suffix range: the last N bytes
            first, last = max(0, size - int(end)), size - 1
        else:
            first, last = int(start), min(size - 1, int(end) if end else size - 1)
        if first >= size:
            self.send_error(416)
            return None
        f = open(path, "rb")  # noqa: SIM115 (closed by copyfile's caller)
        f.seek(first)
        self.send_response(206)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Range", f"bytes {first}-{last}/{size}")
        self.send_header("Content-Length", str(last - first + 1))
        self.end_headers()
        self._left = last - first + 1
        return f

    def copyfile(self, source, outputfile):
        left = getattr(self, "_left", None)
        data = source.read() if left is None else source.read(left)
        self.served[self.path.split("?")[0]] += len(data)
        outputfile.write(data)

    def end_headers(self):
        if not self._headers_buffer or b"Accept-Ranges" not in b"".join(self._headers_buffer):
            self.send_header("Accept-Ranges", "bytes")
        super().end_headers()


def serve_folder(folder):
    """Start a threaded Range server on a free port; returns (server, base URL, bytes-served counter)."""
    counter = collections.Counter()
    handler = type("Handler", (RangeHandler,), {"served": counter})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", counter


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch_moto(tmp_dir, env: dict, log_name: str):
    """Start ``python -m moto.server`` on a free port and wait until it answers; returns (process, endpoint)."""
    port = free_port()
    log = open(os.path.join(tmp_dir, log_name), "wb")  # noqa: SIM115 (kept open for the server's life)
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], env=env, stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            # /moto-api/ does not count as an action (the count is for IAM/S3 calls only)
            urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).read()
            return proc, endpoint
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"moto_server did not start (see {log.name})") from None
            time.sleep(0.2)


def start_moto(tmp_dir):
    """moto_server with signatures checked: an IAM user with an allow-all policy is made in the first
    unauthenticated calls. Returns (process, endpoint, key id, secret)."""
    import boto3

    proc, endpoint = _launch_moto(tmp_dir, {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}, "moto.log")
    iam = boto3.client(
        "iam", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    iam.create_user(UserName="tester")
    policy = '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}'
    iam.put_user_policy(UserName="tester", PolicyName="all", PolicyDocument=policy)
    key = iam.create_access_key(UserName="tester")["AccessKey"]
    return proc, endpoint, key["AccessKeyId"], key["SecretAccessKey"]


def start_moto_open(tmp_dir):
    """moto_server WITHOUT signature checks (any key/secret is accepted): listing with a "/" prefix works
    there (the signature-checking server rejects it). Returns (process, endpoint)."""
    env = {k: v for k, v in os.environ.items() if k != "INITIAL_NO_AUTH_ACTION_COUNT"}
    return _launch_moto(tmp_dir, env, "moto-open.log")


class FlakyHandler(RangeHandler):
    """A Range server that fails chosen requests: ``rules`` (per server class) hold dicts with ``path``,
    ``mode`` ("503", "403" or "close": the headers of a 206, then the connection is closed without the
    body), ``lo``/``hi`` (only requests whose byte range overlaps [lo, hi); a request without Range
    overlaps from 0), ``left`` (how many more to fail; None: all) and ``hits`` (failed so far)."""

    rules: list  # set per server class (see serve_flaky)

    def _rule(self):
        path = self.path.split("?")[0]
        rng = self.headers.get("Range")
        first, last = 0, 0  # a HEAD or a whole GET meets only the rules from byte 0 (opening the file)
        if rng and rng.startswith("bytes=") and not rng.startswith("bytes=-"):
            a, _, b = rng.removeprefix("bytes=").partition("-")
            first, last = int(a), int(b) if b else 2**62
        for rule in self.rules:
            meets = rule["path"] == path and first < rule.get("hi", 2**62) and last >= rule.get("lo", 0)
            if meets and (rule.get("left") is None or rule["left"] > 0):
                return rule
        return None

    def _maybe_fail(self) -> bool:
        rule = self._rule()
        if rule is None:
            return False
        if rule.get("left") is not None:
            rule["left"] -= 1
        rule["hits"] = rule.get("hits", 0) + 1
        if rule["mode"] == "close":
            self.send_response(206)
            self.send_header("Content-Length", "1000000")
            self.send_header("Content-Range", "bytes 0-999999/1000000")
            self.end_headers()
            self.wfile.flush()
        else:
            self.send_error(int(rule["mode"]))
        self.close_connection = True
        return True

    def do_GET(self):
        if not self._maybe_fail():
            super().do_GET()

    def do_HEAD(self):
        if not self._maybe_fail():
            super().do_HEAD()


def serve_flaky(folder):
    """Start a :class:`FlakyHandler` server; returns (server, base URL, bytes served per path, rules list)."""
    counter, rules = collections.Counter(), []
    handler = type("Handler", (FlakyHandler,), {"served": counter, "rules": rules})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", counter, rules


class BasicAuthHandler(RangeHandler):
    """A Range server that answers 401 unless the request carries HTTP basic auth ``credentials``."""

    credentials: str  # "user:password", set per server class (see serve_basic_auth)

    def _allowed(self) -> bool:
        import base64

        if self.headers.get("Authorization") == "Basic " + base64.b64encode(self.credentials.encode()).decode():
            return True
        self.send_error(401)
        return False

    def do_GET(self):
        if self._allowed():
            super().do_GET()

    def do_HEAD(self):
        if self._allowed():
            super().do_HEAD()


def serve_basic_auth(folder, credentials: str):
    """Start a :class:`BasicAuthHandler` server; returns (server, base URL, bytes served per path)."""
    counter = collections.Counter()
    handler = type("Handler", (BasicAuthHandler,), {"served": counter, "credentials": credentials})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(folder)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}", counter
