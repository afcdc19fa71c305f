#!/usr/bin/python3
"""A real RTSP test camera: replays mp4 files in a loop, in real time, with GStreamer's RTSP server.

Run it with Debian's system python (it needs `gi` with GstRtspServer, which a venv lacks):

    /usr/bin/python3 tools/rtsp_server.py --port 8554 --mount cam1=a.mp4 --mount cam2=b.mp4 [--fps 25]

It prints one `READY rtsp://HOST:PORT/NAME` line per mount once it listens (`--port 0` picks a free
port and the line tells which), and exits cleanly on SIGTERM or SIGINT.

Why it works this way: each file is demuxed once into H.264 access units (no re-encoding, so four
cameras cost almost no CPU); a shared media factory feeds them from `appsrc` in a loop with rising
timestamps, and the RTSP server's sink paces them against the clock, which gives real time. The
original decode order is kept (the clips have B-frames); presentation times are re-made from the
display order at a constant frame rate (the file's own, or `--fps`).
"""
from __future__ import annotations

import argparse
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

DEMUX = ("filesrc name=file ! qtdemux ! h264parse config-interval=-1 ! "
         "video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false")
SERVE = "( appsrc name=src format=time ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=1 )"


@dataclass(frozen=True)
class Unit:
    """One H.264 access unit in decode order, with its place in display order."""

    data: bytes
    display: int
    keyframe: bool


@dataclass(frozen=True)
class Clip:
    units: list[Unit]
    fps: float
    reorder: int  # frames by which presentation must trail decoding (B-frames)


def load_clip(path: Path, fps: float | None) -> Clip:
    """Demux an mp4 into H.264 access units once, so the loop replays bytes, not files."""
    pipeline = Gst.parse_launch(DEMUX)
    pipeline.get_by_name("file").set_property("location", str(path))
    sink = pipeline.get_by_name("sink")
    pipeline.set_state(Gst.State.PLAYING)
    raw: list[tuple[bytes, int, bool]] = []
    got_caps = False
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        got_caps = got_caps or sample.get_caps() is not None
        buf = sample.get_buffer()
        ok, info = buf.map(Gst.MapFlags.READ)
        if not ok:
            continue
        raw.append((bytes(info.data), buf.pts, not buf.has_flags(Gst.BufferFlags.DELTA_UNIT)))
        buf.unmap(info)
    bus = pipeline.get_bus()
    error = bus.pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if error is not None or not raw or not got_caps:
        detail = error.parse_error()[0].message if error is not None else "no H.264 video"
        raise ValueError(f"{path}: {detail}")
    order = sorted(range(len(raw)), key=lambda i: raw[i][1])
    display = {decode: shown for shown, decode in enumerate(order)}
    units = [Unit(data, display[i], key) for i, (data, _, key) in enumerate(raw)]
    reorder = max(0, max(i - u.display for i, u in enumerate(units)))
    return Clip(units, fps or _measured_fps([pts for _, pts, _ in raw]) or 25.0, reorder)


def _measured_fps(pts: list[int]) -> float | None:
    """The file's mean frame rate from its timestamps (caps often say a rounded 30/1)."""
    valid = [p for p in pts if p != Gst.CLOCK_TIME_NONE]
    span = max(valid) - min(valid) if len(valid) > 1 else 0
    return (len(valid) - 1) * Gst.SECOND / span if span > 0 else None


class LoopFeeder:
    """Pushes a clip's units into one media's appsrc, forever, with rising timestamps."""

    def __init__(self, clip: Clip, appsrc: Gst.Element) -> None:
        self.clip = clip
        self.sent = 0
        # h264parse reads size and profile from the stream; the caps only carry the replay rate.
        appsrc.set_property("caps", Gst.Caps.from_string(
            f"video/x-h264,stream-format=byte-stream,alignment=au,framerate={round(clip.fps * 1000)}/1000"))
        appsrc.connect("need-data", self.on_need_data)

    def on_need_data(self, appsrc: Gst.Element, _length: int) -> None:
        units = self.clip.units
        loop, i = divmod(self.sent, len(units))
        unit = units[i]
        step = Gst.SECOND / self.clip.fps
        base = loop * len(units)
        buf = Gst.Buffer.new_wrapped(unit.data)
        buf.pts = int((base + unit.display + self.clip.reorder) * step)
        buf.dts = int((base + i) * step)
        buf.duration = int(step)
        if not unit.keyframe:
            buf.set_flags(Gst.BufferFlags.DELTA_UNIT)
        self.sent += 1
        appsrc.emit("push-buffer", buf)


def make_factory(clip: Clip) -> GstRtspServer.RTSPMediaFactory:
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(SERVE)
    factory.set_shared(True)  # every client of a mount sees the same camera

    def configure(_factory, media) -> None:
        # A fresh feeder per media: a camera whose last client left starts again from frame 0.
        # The signal connection holds the feeder, so it lives exactly as long as the media.
        LoopFeeder(clip, media.get_element().get_by_name("src"))

    factory.connect("media-configure", configure)
    return factory


def parse_mount(text: str) -> tuple[str, Path]:
    name, sep, file = text.partition("=")
    if not sep or not name or not file or "/" in name:
        raise argparse.ArgumentTypeError(f"expected NAME=FILE.mp4, got {text!r}")
    path = Path(file)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {file}")
    return name, path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8554, help="0 picks a free port")
    parser.add_argument("--mount", type=parse_mount, action="append", required=True,
                        metavar="NAME=FILE.mp4", help="repeatable")
    parser.add_argument("--fps", type=float, default=None, help="replay rate (default: the file's)")
    args = parser.parse_args(argv)
    if args.fps is not None and not 0 < args.fps <= 240:
        parser.error("--fps must be in (0, 240]")

    Gst.init(None)
    try:
        clips = {name: load_clip(path, args.fps) for name, path in args.mount}
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    server = GstRtspServer.RTSPServer()
    server.set_address(args.host)
    server.set_service(str(args.port))
    mounts = server.get_mount_points()
    for name, clip in clips.items():
        mounts.add_factory(f"/{name}", make_factory(clip))
    try:
        server.attach(None)
    except GLib.Error as exc:
        print(f"error: cannot listen on {args.host}:{args.port}: {exc.message}", file=sys.stderr)
        return 2
    port = server.get_bound_port()
    if port <= 0:  # attach() may "succeed" with no socket when the port is taken
        print(f"error: cannot listen on {args.host}:{args.port} (address in use?)", file=sys.stderr)
        return 2
    for name, clip in clips.items():
        print(f"READY rtsp://{args.host}:{port}/{name}", flush=True)
        print(f"{name}: {len(clip.units)} frames at {clip.fps:.2f} fps, looped", file=sys.stderr, flush=True)

    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    loop.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
