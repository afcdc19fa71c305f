"""A whole video (an upload or a local file): PyAV decoding into Frames, every frame in order, and
the analysis loop that runs them through the worker and a SourcePipeline.

`probe_video` opens the container and decodes its first frame, so a corrupt or non-video file is
refused (`CorruptVideoError`, a clear reason) before any result has been promised to the client. With
`max_pixels` it also refuses frames larger than that, from the stream header before decoding and
again on the decoded first frame (the header may lie), so a huge frame size cannot exhaust memory.
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import BinaryIO, Callable, Iterable, Iterator, Protocol

import av

from service.frames import Frame
from service.worker import InferenceWorker, infer_in_order

log = logging.getLogger(__name__)

VideoInput = str | Path | BinaryIO


class CorruptVideoError(ValueError):
    """The input is not a decodable video; `reason` says why, in words fit for an API client."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NotAVideoError(CorruptVideoError):
    """No container PyAV can read, or no video stream in it (an API answers 415, not 400)."""


@dataclass(frozen=True, slots=True)
class VideoInfo:
    """What the container says about its first video stream."""

    container: str
    codec: str
    width: int
    height: int
    fps: float  # average frame rate, 0 when unknown
    frames: int  # frame count from the header, 0 when unknown (decoding is the truth)
    duration_s: float  # 0 when unknown

    def to_json(self) -> dict:
        return asdict(self)


# Containers an upload may be. FFmpeg also probes text "containers" that name other files (an
# ffconcat list, a playlist): uploaded, those would make the server read its own local files.
# The magic bytes are checked before FFmpeg sees the upload, the demuxer's name after it opened.
SUPPORTED_CONTAINERS = "MP4/MOV, Matroska/WebM, AVI, MPEG-TS/PS, FLV, ASF/WMV or Ogg"
_DEMUXERS = {"mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts", "mpeg", "flv",
             "asf", "ogg"}
_MP4_BOXES = {b"ftyp", b"moov", b"mdat", b"free", b"skip", b"wide", b"pnot"}


def _container_magic_ok(head: bytes) -> bool:
    """Whether the first bytes are those of a video container FFmpeg may open for an upload."""
    return (head[4:8] in _MP4_BOXES
            or head.startswith((b"\x1aE\xdf\xa3", b"RIFF", b"FLV", b"OggS", b"\x00\x00\x01\xba",
                                b"\x30\x26\xb2\x75\x8e\x66\xcf\x11"))
            or (len(head) > 188 and head[0] == 0x47 and head[188] == 0x47)  # MPEG-TS packets
            or (len(head) > 196 and head[4] == 0x47 and head[196] == 0x47))  # M2TS (timecoded)


def _open(src: VideoInput) -> av.container.InputContainer:
    upload = hasattr(src, "read")
    if upload:
        src.seek(0)
        head = src.read(512)
        src.seek(0)
        if not _container_magic_ok(head):
            raise NotAVideoError(f"not a supported video container ({SUPPORTED_CONTAINERS} expected)")
    try:
        container = av.open(src if upload else str(src), mode="r")
    except FileNotFoundError:
        raise
    except (av.FFmpegError, ValueError, OSError) as exc:
        raise NotAVideoError(f"not a readable video container ({_why(exc)})") from exc
    if not container.streams.video:
        container.close()
        raise NotAVideoError("the file has no video stream")
    if upload and not set(container.format.name.split(",")) & _DEMUXERS:
        name = container.format.name
        container.close()
        raise NotAVideoError(f"not a supported video container ({name}; {SUPPORTED_CONTAINERS} expected)")
    return container


def _why(exc: BaseException) -> str:
    """FFmpeg's message without errno noise: 'Invalid data found when processing input'."""
    text = getattr(exc, "strerror", None) or str(exc)
    return str(text).split(": '")[0]


def _check_pixels(width: int, height: int, max_pixels: int | None) -> None:
    if max_pixels is not None and width * height > max_pixels:
        raise CorruptVideoError(f"the video frames are {width} x {height} = {width * height} pixels, more "
                                f"than the {max_pixels} allowed (FALLDET_MAX_IMAGE_PIXELS)")


def probe_video(src: VideoInput, max_pixels: int | None = None) -> VideoInfo:
    """Open `src` and decode its first frame; raise CorruptVideoError when either fails or, with
    `max_pixels`, when a frame has more pixels than that."""
    container = _open(src)
    try:
        stream = container.streams.video[0]
        _check_pixels(stream.codec_context.width or 0, stream.codec_context.height or 0, max_pixels)
        try:
            first = next(container.decode(stream), None)
        except (av.FFmpegError, ValueError, OSError) as exc:
            raise CorruptVideoError(f"the video stream cannot be decoded ({_why(exc)})") from exc
        if first is None:
            raise CorruptVideoError("the video stream has no frames")
        _check_pixels(first.width, first.height, max_pixels)
        rate = stream.average_rate or stream.guessed_rate
        duration = float(stream.duration * stream.time_base) if stream.duration and stream.time_base else (
            container.duration / 1e6 if container.duration else 0.0)
        return VideoInfo(container=container.format.name, codec=stream.codec_context.name,
                         width=first.width, height=first.height, fps=float(rate) if rate else 0.0,
                         frames=int(stream.frames or 0), duration_s=round(duration, 3))
    finally:
        container.close()
        if hasattr(src, "seek"):
            src.seek(0)


def iter_frames(src: VideoInput, source: str, clock: Callable[[], float] = time.time,
                stop: Callable[[], bool] = lambda: False) -> Iterator[Frame]:
    """Every decoded frame of the first video stream as a BGR Frame, `pts_s` from the stream start.

    A decoding error after the first frame raises CorruptVideoError (frames before it were yielded);
    `stop()` returning True ends the iteration early (a client that went away).
    """
    container = _open(src)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        base = stream.time_base
        start = stream.start_time or 0
        rate = float(stream.average_rate or stream.guessed_rate or 0) or 25.0
        index = 0
        decoded = container.decode(stream)
        while not stop():
            try:
                frame = next(decoded, None)
            except (av.FFmpegError, ValueError, OSError) as exc:
                raise CorruptVideoError(f"decoding failed after frame {index - 1} ({_why(exc)})") from exc
            if frame is None:
                return
            pts_s = float((frame.pts - start) * base) if frame.pts is not None and base else index / rate
            yield Frame(source=source, index=index, pts_s=pts_s, captured_at=clock(),
                        image=frame.to_ndarray(format="bgr24"))
            index += 1
    finally:
        container.close()


class StepPipeline(Protocol):
    """What `analyze` needs of `service.pipeline.SourcePipeline`."""

    def step(self, frame: Frame, persons: list, latency_ms: float, dropped: int) -> tuple: ...
    def finish(self) -> list: ...
    def summary(self) -> dict: ...


def analyze(frames: Iterable[Frame], worker: InferenceWorker, pipeline: StepPipeline,
            video: VideoInfo | None = None, window: int | None = None, weak: bool = False) -> Iterator[dict]:
    """The lines of a whole-video analysis, shared by `POST /v1/videos` and `python -m service analyze`.

    One `"type": "frame"` line per decoded frame, event lines as the fall rules raise them, and a
    final `"type": "summary"` line (`complete`: every declared frame was decoded). A decoding error
    part-way, or a file that ends before what its header declares (`"code": "ended_early"`), gives
    an `"type": "error"` line, then the events that close open falls and the summary of what was
    decoded. `weak`: frame lines also carry the tracked boxes under the reporting threshold
    (`"weak"`), for evaluation replays; clients never get them.
    """
    started = time.perf_counter()
    count = 0
    error = None
    last_pts: float | None = None
    try:
        for frame, persons in infer_in_order(worker, frames, window or 2 * worker.max_batch):
            latency_ms = (time.time() - frame.captured_at) * 1000.0
            result, events = pipeline.step(frame, persons, latency_ms, 0)
            count += 1
            last_pts = frame.pts_s
            yield result.to_json(weak=True) if weak else result.to_json()
            for event in events:
                yield _unstored(event)
    except CorruptVideoError as exc:
        error = exc.reason
        yield {"type": "error", "reason": exc.reason, "frames": count}
    else:
        early = ended_early(video, count, last_pts)
        if early is not None:
            error = early["reason"]
            yield {"type": "error", "code": "ended_early", **early}
    for event in pipeline.finish():
        yield _unstored(event)
    summary = dict(pipeline.summary())
    summary.setdefault("type", "summary")
    summary.setdefault("frames", count)
    summary.setdefault("elapsed_s", round(time.perf_counter() - started, 3))
    threshold = getattr(getattr(worker, "runtime", None), "score_threshold", None)
    if threshold is not None:  # which model and threshold produced these results (replays use it)
        summary.setdefault("model", {"file": worker.runtime.model_path.name, "score_threshold": threshold,
                                     "track_threshold": getattr(worker.runtime, "track_threshold", threshold)})
    if video is not None:
        summary.setdefault("video", video.to_json())
    if error is not None:
        summary.setdefault("error", error)
    summary["complete"] = error is None  # every frame the file declares was decoded
    yield summary


def _unstored(event) -> dict:  # noqa: ANN001 (service.events.Event)
    """An event line of a whole-video analysis. Such events are not kept in the alert store, so
    there is no snapshot to fetch (`GET /v1/alerts/{id}` does not know them): say so."""
    line = event.to_json()
    line["has_snapshot"] = False
    return line


def ended_early(video: VideoInfo | None, decoded: int, last_pts: float | None) -> dict | None:
    """What says the file stopped before its end (a truncated or partly written file), or None.

    The decoder ends quietly at a cut; the container's header still declares the whole video: its
    frame count, else its duration. A few frames of slack cover edit lists and rounding.
    """
    if video is None or decoded == 0:
        return None
    if video.frames > 0:
        if decoded >= video.frames - max(2, round(0.01 * video.frames)):
            return None
        reason = (f"the video ended early: {decoded} of the {video.frames} frames its header declares were "
                  f"decoded (a truncated or partly written file?)")
        return {"reason": reason, "frames": decoded, "declared_frames": video.frames}
    if video.duration_s > 0 and last_pts is not None:
        step = 1.0 / video.fps if video.fps > 0 else 0.04
        if last_pts + step >= video.duration_s - max(1.0, 0.05 * video.duration_s):
            return None
        reason = (f"the video ended early: decoding stopped at {last_pts:.1f} s of the {video.duration_s:.1f} s "
                  f"its header declares (a truncated or partly written file?)")
        return {"reason": reason, "frames": decoded, "declared_duration_s": video.duration_s}
    return None
