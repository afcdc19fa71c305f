"""Issue 25, part 2: `python -m service serve` as the README runs it, in a child process.

- item 5: without FALLDET_API_KEYS the key is made once, kept in STATE_DIR/api_key (mode 0600) and
  the same after a restart (a ward tablet stays signed in); the log says where it is, never the key;
- item 6: `--ssl-certfile/--ssl-keyfile` serve HTTPS (a self-signed certificate made with openssl,
  trusted by the client), and a half-given TLS option is a clear error.
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from conftest import REPO_ROOT


class Serve:
    """`python -m service serve` on a free port with its output collected; `scheme` http or https."""

    def __init__(self, model: Path, state: Path, *extra: str, scheme: str = "http", verify=True,
                 env: dict | None = None) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        base = {k: v for k, v in os.environ.items() if not k.startswith("FALLDET_API_KEY")}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.port), "--model", str(model), *extra],
            cwd=REPO_ROOT, env=base | {"FALLDET_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"} | (env or {}),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()
        self.url = f"{scheme}://127.0.0.1:{self.port}"
        self.verify = verify
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, "server exited:\n" + self.log
            try:
                if httpx.get(self.url + "/healthz", timeout=2, verify=verify).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start:\n" + self.log
            time.sleep(0.3)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def get(self, path: str, key: str) -> httpx.Response:
        return httpx.get(self.url + path, headers={"X-API-Key": key}, timeout=10, verify=self.verify)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def test_the_generated_key_is_kept_in_the_state_folder_across_restarts(tiny_model, tmp_path):
    state = tmp_path / "state"
    first = Serve(tiny_model, state)
    try:
        path = state / "api_key"
        key = path.read_text().strip()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(key) >= 32
        assert first.get("/v1/streams", key).status_code == 200
        assert first.get("/v1/streams", "wrong").status_code == 401
        assert f"is in {path.resolve()}" in first.log and "was made" in first.log
    finally:
        first.stop()
    assert key not in first.log  # where it is, never the key itself
    second = Serve(tiny_model, state)
    try:
        assert second.get("/v1/streams", key).status_code == 200  # the tablet's key still works
        assert path.read_text().strip() == key and "was made" not in second.log
    finally:
        second.stop()
    assert key not in second.log
    # FALLDET_API_KEYS wins: the kept file is not used
    third = Serve(tiny_model, state, env={"FALLDET_API_KEYS": "own-key-" + "z" * 20})
    try:
        assert third.get("/v1/streams", "own-key-" + "z" * 20).status_code == 200
        assert third.get("/v1/streams", key).status_code == 401
    finally:
        third.stop()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_serve_over_https_with_a_certificate(tiny_model, tmp_path):
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    trust = ssl.create_default_context(cafile=str(cert))
    server = Serve(tiny_model, tmp_path / "state", "--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                   scheme="https", verify=trust, env={"FALLDET_API_KEYS": "tls-key-" + "q" * 20})
    try:
        assert server.get("/v1/streams", "tls-key-" + "q" * 20).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP on the TLS port gets no answer
            httpx.get(f"http://127.0.0.1:{server.port}/healthz", timeout=5)
        with pytest.raises(httpx.ConnectError, match=re.compile("CERTIFICATE_VERIFY_FAILED", re.I)):
            httpx.get(server.url + "/healthz", timeout=5)  # an untrusted certificate is refused by clients
    finally:
        server.stop()
    half = subprocess.run([sys.executable, "-m", "service", "serve", "--ssl-certfile", str(cert)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60)
    assert half.returncode == 2 and "needs both --ssl-certfile and --ssl-keyfile" in half.stderr
