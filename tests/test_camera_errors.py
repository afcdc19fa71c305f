"""Issue 20, item 7: a camera that cannot be read says why in plain words, FFmpeg's text beside it.

Real PyAV opens against real sockets on loopback: a listener that never answers, a web server on
the RTSP port, an RTSP server that refuses the login, a closed port, a name that does not resolve.
Then a reader whose camera comes up clears its error once live.
"""
from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import av
import numpy as np

from service.sources.camera_errors import explain
from service.sources.rtsp import RtspReader, RtspSettings, StreamState, _describe

Handler = Callable[[str], bytes | None]  # request text -> answer (None: say nothing)
CRLF = "\r\n"


@contextmanager
def listener(handler: Handler | None) -> Iterator[int]:
    """A TCP server on loopback: answers each request (up to a blank line) with `handler`, or
    never says anything when `handler` is None."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    conns: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        buf = b""
        try:
            while data := conn.recv(4096):
                buf += data
                while b"\r\n\r\n" in buf and handler is not None:
                    request, buf = buf.split(b"\r\n\r\n", 1)
                    answer = handler(request.decode("latin-1"))
                    if answer:
                        conn.sendall(answer)
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            conns.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in conns:
            conn.close()


def cseq(request: str) -> str:
    found = re.search(r"CSeq:\s*(\d+)", request)
    return found.group(1) if found else "1"


def rtsp_401(request: str) -> bytes:
    return (f"RTSP/1.0 401 Unauthorized{CRLF}CSeq: {cseq(request)}{CRLF}"
            f'WWW-Authenticate: Basic realm="cam"{CRLF}{CRLF}').encode()


def http_400(request: str) -> bytes:
    return f"HTTP/1.1 400 Bad Request{CRLF}Content-Length: 0{CRLF}{CRLF}".encode()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def open_error(url: str) -> tuple[str, str]:
    """Open `url` as the reader does; the (message, detail) of the failure."""
    try:
        av.open(url, options={"rtsp_transport": "tcp", "timeout": "1500000"}, timeout=(3.0, 1.5)).close()
    except Exception as exc:  # noqa: BLE001 - any failure is what is explained
        error = explain(exc, url, _describe(exc, url), probe_timeout_s=1.5)
        return error.message, error.detail
    raise AssertionError(f"{url} opened")


def test_a_listener_that_never_answers() -> None:
    with listener(None) as port:
        message, detail = open_error(f"rtsp://127.0.0.1:{port}/x")
    assert message.startswith(f"no answer: 127.0.0.1:{port} accepted the connection but sent nothing"), message
    assert "InvalidDataError" in detail  # what FFmpeg said, kept beside


def test_a_web_server_on_the_rtsp_port() -> None:
    with listener(http_400) as port:
        message, _ = open_error(f"rtsp://127.0.0.1:{port}/x")
    assert message == f"not an RTSP server: 127.0.0.1:{port} answered 'HTTP/1.1 400 Bad Request'"


def test_a_refused_login_names_the_password_not_the_password() -> None:
    with listener(rtsp_401) as port:
        message, detail = open_error(f"rtsp://admin:hunter2@127.0.0.1:{port}/x")
    assert message.startswith("authentication failed"), message
    assert "hunter2" not in message + detail and "admin:***@" in detail


def test_a_listener_that_answers_binary_garbage() -> None:
    with listener(lambda request: bytes(range(256)) * 2) as port:
        message, _ = open_error(f"rtsp://127.0.0.1:{port}/x")
    assert re.fullmatch(rf"not an RTSP server: 127\.0\.0\.1:{port} answered with \d+ bytes of binary data", message)


def test_nothing_listening_and_an_unknown_host() -> None:
    port = closed_port()
    message, detail = open_error(f"rtsp://127.0.0.1:{port}/x")
    assert message.startswith(f"connection refused: nothing listens at 127.0.0.1:{port}")
    assert "Connection refused" in detail
    message, detail = open_error("rtsp://no-such-camera.invalid/stream")
    assert message.startswith("host not found: 'no-such-camera.invalid' does not resolve"), message
    assert "Input/output error" in detail


def test_the_error_clears_once_the_camera_is_live(tmp_path: Path) -> None:
    """First attempt: a real refusal; second: a real file opened by PyAV (the camera is back)."""
    clip = tmp_path / "clip.mp4"
    with av.open(str(clip), "w") as out:
        stream = out.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(50):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 4, "uint8"), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    refused = f"rtsp://127.0.0.1:{closed_port()}/x"
    calls: list[str] = []

    def opener(url: str, options=None, timeout=None):  # noqa: ANN001, ANN202
        calls.append(url)
        if len(calls) == 1:
            return av.open(refused, options=options, timeout=timeout)  # raises the real error
        time.sleep(0.3)  # long enough to read the error while in backoff
        return av.open(str(clip))

    settings = RtspSettings(backoff_initial_s=0.5, backoff_max_s=0.5, backoff_jitter=0.0)
    reader = RtspReader("cam", refused, lambda frame: None, settings, opener=opener)
    reader.start()
    try:
        deadline = time.monotonic() + 10
        while reader.status()["last_error"] is None:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        failed = reader.status()
        assert failed["last_error"].startswith("connection refused") and failed["last_error_at"] > 0
        assert "Connection refused" in failed["last_error_detail"]
        while reader.state != StreamState.LIVE:
            assert time.monotonic() < deadline, reader.status()
            time.sleep(0.01)
        live = reader.status()
        assert (live["last_error"], live["last_error_detail"], live["last_error_at"]) == (None, None, None)
    finally:
        reader.stop()


def test_api_status_shows_both_fields(tiny_client, auth) -> None:
    """Over `GET /v1/streams/{id}`: the words and the detail, with the password masked."""
    port = closed_port()
    r = tiny_client.post("/v1/streams", json={"id": "cam", "url": f"rtsp://u:hunter2@127.0.0.1:{port}/x"},
                         headers=auth)
    assert r.status_code == 201, r.text
    deadline = time.monotonic() + 10
    while not (status := tiny_client.get("/v1/streams/cam", headers=auth).json())["last_error"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert status["last_error"].startswith("connection refused")
    assert "Connection refused" in status["last_error_detail"] and "hunter2" not in str(status)
    tiny_client.delete("/v1/streams/cam", headers=auth)
