"""Issue 20 against the real thing: `python -m service serve` (uvicorn, its own logging) in a child
process, on the tiny contract model, talked to over real sockets.

- item 4: WebSocket refusals reach the client as the documented close codes and reasons (1008
  missing / wrong key, 4404 unknown camera), not as a bare HTTP 403;
- item 2: the server log never holds an API key, whichever way it was sent (`?api_key=` on HTTP
  and WebSocket, right or wrong), and the page's way (a subprotocol) keeps it out of the URL;
- item 12: `/docs` renders in Chromium with every request off loopback blocked;
- item 13: `python -m service watch` (the README's client) prints live messages and says why it
  was refused.
"""
from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from conftest import REPO_ROOT

KEY = "live-key-" + "k3y" * 6  # distinctive, to be searched for in the log
WRONG = "wrong-key-" + "x7" * 8
CHROMIUM = "/usr/bin/chromium"


class Server:
    """`python -m service serve` on a free port; its stdout + stderr collected line by line."""

    def __init__(self, model: Path, state: Path) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = os.environ | {"FALLDET_API_KEYS": KEY, "FALLDET_STATE_DIR": str(state), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(self.port), "--model", str(model),
             "--log-level", "info"], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        threading.Thread(target=self._drain, daemon=True).start()
        deadline = time.monotonic() + 90
        while True:
            assert self.proc.poll() is None, "server exited:\n" + self.log
            try:
                if httpx.get(self.http + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "server did not start:\n" + self.log
            time.sleep(0.3)

    def _drain(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.log):
            assert time.monotonic() < deadline, f"no {pattern!r} in the log:\n{self.log}"
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tiny_model, tmp_path_factory.mktemp("live") / "state")
    try:
        yield srv
    finally:
        srv.stop()


def _refusal(url: str, **kwargs) -> tuple[int, str]:
    """Connect, expect the server to close: its (code, reason)."""
    with connect(url, open_timeout=10, **kwargs) as ws:
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    return closed.value.rcvd.code, closed.value.rcvd.reason


def key_protocols(key: str) -> list[str]:
    encoded = base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")
    return ["falldet", f"falldet.key.{encoded}"]


# ------------------------------------------------------------------ item 4: close codes on uvicorn

def test_websocket_refusals_carry_the_documented_codes(server: Server) -> None:
    code, reason = _refusal(server.ws + "/v1/events")
    assert code == 1008 and reason.startswith("missing API key"), (code, reason)
    assert _refusal(server.ws + "/v1/events", additional_headers={"X-API-Key": WRONG}) == (1008, "invalid API key")
    assert _refusal(server.ws + "/v1/events", subprotocols=key_protocols(WRONG)) == (1008, "invalid API key")
    assert _refusal(server.ws + "/v1/streams/nope/ws", additional_headers={"X-API-Key": KEY}) == \
        (4404, "no stream 'nope'")
    assert _refusal(server.ws + "/v1/streams/nope/ws", subprotocols=key_protocols(KEY)) == \
        (4404, "no stream 'nope'")


def test_the_key_as_a_subprotocol_is_accepted(server: Server) -> None:
    with connect(server.ws + "/v1/events", subprotocols=key_protocols(KEY), open_timeout=10) as ws:
        assert ws.subprotocol == "falldet"  # a browser drops a connection whose answer names none
        with pytest.raises(TimeoutError):  # open and quiet: no alerts yet, no refusal
            ws.recv(timeout=1.0)


# ------------------------------------------------------------------ item 2: no key in the log

def test_no_api_key_reaches_the_server_log(server: Server) -> None:
    assert httpx.get(f"{server.http}/metrics?api_key={KEY}").status_code == 200
    assert httpx.get(f"{server.http}/metrics?api_key={WRONG}").status_code == 401
    with connect(f"{server.ws}/v1/events?api_key={KEY}", open_timeout=10):
        pass
    with contextlib.suppress(ConnectionClosed):
        _refusal(f"{server.ws}/v1/events?api_key={WRONG}")
    with connect(server.ws + "/v1/events", subprotocols=key_protocols(KEY), open_timeout=10):
        pass
    server.wait_log(r'"GET /metrics\?api_key=\*\*\* HTTP/1\.1" 401')
    server.wait_log(r'WebSocket /v1/events\?api_key=\*\*\*" \[accepted\]')
    log = server.log
    assert KEY not in log and WRONG not in log, log
    encoded = key_protocols(KEY)[1].removeprefix("falldet.key.")
    assert encoded not in log
    assert '"GET /metrics?api_key=*** HTTP/1.1" 200' in log
    assert len(re.findall(r"api_key=\*\*\*", log)) >= 4


# ------------------------------------------------------------------ item 13: the project's client

def _watch(server: Server, *args: str, key: str = KEY) -> subprocess.CompletedProcess:
    env = os.environ | {"FALLDET_API_KEY": key}
    return subprocess.run([sys.executable, "-m", "service", "watch", "--url", server.http, *args],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_watch_prints_a_cameras_messages_and_says_why_it_is_refused(server: Server, tmp_path: Path) -> None:
    wrong = _watch(server, key=WRONG)
    assert wrong.returncode == 2 and "the API key was refused (close code 1008: invalid API key)" in wrong.stderr
    unknown = _watch(server, "nope")
    assert unknown.returncode == 2 and "no such camera (close code 4404: no stream 'nope')" in unknown.stderr


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_watch_follows_a_live_camera(server: Server, short_clip: Path) -> None:
    """A real RTSP camera (tools/rtsp_server.py) replaying a clip: `watch cam` prints its frames."""
    from test_web_page import rtsp_camera, skip_without_camera

    skip_without_camera()
    auth = {"X-API-Key": KEY}
    with rtsp_camera(short_clip) as url:
        assert httpx.post(server.http + "/v1/streams", headers=auth, json={"id": "cam", "url": url}).status_code == 201
        try:
            done = _watch(server, "cam", "--count", "3")
        finally:
            httpx.delete(server.http + "/v1/streams/cam", headers=auth)
    assert done.returncode == 0, done.stderr
    lines = [__import__("json").loads(line) for line in done.stdout.splitlines()]
    assert len(lines) == 3 and all(m["type"] == "frame" and m["source"] == "cam" for m in lines)


# ------------------------------------------------------------------ item 12: /docs offline

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_api_docs_render_with_no_internet(server: Server) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} missing (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    elsewhere: list[str] = []

    def only_loopback(route) -> None:  # noqa: ANN001
        host = httpx.URL(route.request.url).host
        if host in ("127.0.0.1", "localhost") or route.request.url.startswith("data:"):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.route("**/*", only_loopback)
            page.goto(server.http + "/docs")
            page.wait_for_selector(".swagger-ui .opblock", timeout=30000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "els => els.map(e => e.textContent)")
            assert "/v1/alerts/{alert_id}/ack" in [x.replace("\u200b", "") for x in paths]
        finally:
            browser.close()
    assert elsewhere == []
    # no /redoc: its bundle fetches a logo from the internet
    assert httpx.get(server.http + "/redoc").status_code == 404
