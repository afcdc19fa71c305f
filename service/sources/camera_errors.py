"""Why a camera cannot be read, in words an installer can act on.

FFmpeg's own messages say little: a listener that never answers, a web server on the RTSP port
and a refused login all end as `InvalidDataError: Invalid data found when processing input`, and an
unknown host as `OSError: [Errno 5] Input/output error`. `explain` maps the errors FFmpeg names
well by their type; for the others it asks the camera itself, briefly: does the host resolve, does
the port take a connection, and does what answers an RTSP `OPTIONS` speak RTSP? The raw text is
kept beside the words (`detail`), password masked, for whoever needs to dig further.
"""
from __future__ import annotations

import socket
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import av

RTSP_PORT, RTSPS_PORT = 554, 322


@dataclass(frozen=True, slots=True)
class CameraError:
    message: str  # plain words: what is wrong and what to check
    detail: str  # the underlying error, password masked


def explain(exc: BaseException, url: str, detail: str, probe_timeout_s: float = 2.0) -> CameraError:
    """Plain words for `exc`, raised while opening `url`; `detail` is its masked raw text."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    port = parts.port or (RTSPS_PORT if parts.scheme.lower() == "rtsps" else RTSP_PORT)
    where = f"{host}:{port}"
    known = _by_type(exc, where)
    if known is None:
        known = probe(url, probe_timeout_s) or "the camera's stream could not be read"
    return CameraError(known, detail)


def _by_type(exc: BaseException, where: str) -> str | None:
    if isinstance(exc, av.error.HTTPUnauthorizedError):
        return "authentication failed: the camera refused the user name or password in the URL"
    if isinstance(exc, av.error.HTTPForbiddenError):
        return "access denied by the camera (403): this user may not open that stream"
    if isinstance(exc, av.error.HTTPNotFoundError):
        return "stream not found on the camera (404): check the path in the URL"
    if isinstance(exc, ConnectionRefusedError):
        return f"connection refused: nothing listens at {where} (wrong port, or the camera's RTSP server is off)"
    if isinstance(exc, (TimeoutError, av.error.ExitError)):
        return f"no answer from {where} (timed out)"
    return None


def probe(url: str, timeout_s: float = 2.0) -> str | None:
    """Ask the camera what FFmpeg did not say: None when it looks like a working RTSP server."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    secure = parts.scheme.lower() == "rtsps"
    port = parts.port or (RTSPS_PORT if secure else RTSP_PORT)
    where = f"{host}:{port}"
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror:
        return f"host not found: {host!r} does not resolve (check the name, or use the camera's IP address)"
    try:
        sock = socket.create_connection((host, port), timeout=timeout_s)
    except ConnectionRefusedError:
        return f"connection refused: nothing listens at {where} (wrong port, or the camera's RTSP server is off)"
    except TimeoutError:
        return f"no answer from {where}: the connection timed out (camera off, wrong address, or a firewall)"
    except OSError as exc:
        return f"cannot reach {where}: {exc.strerror or exc}"
    try:
        with sock:
            sock.settimeout(timeout_s)
            conn: socket.socket = sock
            if secure:
                context = ssl.create_default_context()
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # only asking
                try:
                    conn = context.wrap_socket(sock, server_hostname=host)
                except (ssl.SSLError, OSError):
                    return f"TLS failed with {where}: not an RTSPS (rtsps://) server?"
            bare = urlunsplit((parts.scheme, where, parts.path or "/", parts.query, ""))  # no credentials
            conn.sendall(f"OPTIONS {bare} RTSP/1.0\r\nCSeq: 1\r\nUser-Agent: falldet\r\n\r\n".encode())
            try:
                answer = conn.recv(256)
            except TimeoutError:
                return f"no answer: {where} accepted the connection but sent nothing back (not a camera, or hung)"
            except OSError as exc:
                return f"the connection to {where} failed: {exc.strerror or exc}"
    except OSError:
        return None
    if not answer:
        return f"{where} closed the connection without answering (not an RTSP server?)"
    first = answer.split(b"\r\n", 1)[0][:60]
    if not answer.startswith(b"RTSP/"):
        if first.isascii() and first.decode().isprintable():
            return f"not an RTSP server: {where} answered {first.decode()!r}"
        return f"not an RTSP server: {where} answered with {len(answer)} bytes of binary data"
    if b" 401" in answer[:16]:
        return "authentication failed: the camera refused the user name or password in the URL"
    return None
