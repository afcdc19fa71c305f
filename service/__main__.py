"""Command line: `python -m service serve` (the HTTP service), `python -m service analyze VIDEO`,
`python -m service watch [CAMERA]` (a running service's live messages) and `python -m service
review-export --out DIR` (reviewed alerts as site training data, service/review_export.py).

`analyze` runs a video through the same runtime, inference worker, tracker and fall rules as
`POST /v1/videos` and prints the same NDJSON lines on stdout (frame lines, event lines, a final
summary line); progress goes to stderr.

`serve` gives open connections (a long `/v1/videos` stream, WebSockets) at most
`GRACEFUL_SHUTDOWN_S` after SIGTERM before uvicorn cuts them and runs the app's teardown (cameras'
final events, worker, store), so the teardown fits in Kubernetes' terminationGracePeriodSeconds (30).
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from service.settings import Settings

GRACEFUL_SHUTDOWN_S = 10  # + teardown (a few s) must stay below k8s terminationGracePeriodSeconds: 30


def _settings(model: Path | None) -> "Settings":
    """Settings from the environment, `--model` winning over FALLDET_MODEL (imported late: the
    settings pull in the tracker, and a CLI error should not wait for that)."""
    from service.settings import Settings, get_settings

    return Settings(model=model) if model is not None else get_settings()


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from service.app import create_app

    tls = _tls_options(args)
    if isinstance(tls, str):
        print(f"error: {tls}", file=sys.stderr)
        return 2
    settings = _settings(args.model)
    try:
        app = create_app(settings)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, ws_max_size=1 << 20,
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S, **tls)
    return 0


def _tls_options(args: argparse.Namespace) -> dict | str:
    """uvicorn's TLS options from `--ssl-certfile/--ssl-keyfile` (or FALLDET_SSL_CERTFILE /
    FALLDET_SSL_KEYFILE); {} for plain HTTP; a message when only one is given or a file is missing."""
    import os

    cert = args.ssl_certfile or os.environ.get("FALLDET_SSL_CERTFILE") or None
    key = args.ssl_keyfile or os.environ.get("FALLDET_SSL_KEYFILE") or None
    if cert is None and key is None:
        return {}
    if cert is None or key is None:
        return "HTTPS needs both --ssl-certfile and --ssl-keyfile (or FALLDET_SSL_CERTFILE and FALLDET_SSL_KEYFILE)"
    for what, path in (("certificate", cert), ("key", key)):
        if not Path(path).is_file():
            return f"TLS {what} file not found: {path}"
    return {"ssl_certfile": str(cert), "ssl_keyfile": str(key)}


def analyze(args: argparse.Namespace) -> int:
    from service.sources.upload import CorruptVideoError, analyze as analyze_frames, iter_frames, probe_video

    video: Path = args.video
    if not video.is_file():
        print(f"error: no such file: {video}", file=sys.stderr)
        return 2
    settings = _settings(args.model)
    try:
        info = probe_video(video, settings.max_image_pixels)  # same limit as uploads: no 8K surprise
    except CorruptVideoError as exc:
        print(f"error: {video}: {exc.reason}", file=sys.stderr)
        return 2

    from tqdm import tqdm

    from service.pipeline import SourcePipeline
    from service.runtime import runtime_from_settings
    from service.worker import InferenceWorker

    try:
        runtime = runtime_from_settings(settings)
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    worker = InferenceWorker(runtime, settings.max_batch, settings.max_wait_ms)
    worker.start()
    source = args.source or video.stem
    writer = None
    out = sys.stdout
    try:
        with tqdm(total=info.frames or None, unit="frame", file=sys.stderr, disable=args.quiet,
                  desc=video.name) as progress:
            pipeline = SourcePipeline(source, settings.pipeline, live=False,
                                      detection_threshold=runtime.score_threshold)
            if args.clips is not None:  # an MP4 per fall_alert in DIR; `clip` lines name them
                from service.clips import file_clips

                pipeline, writer = file_clips(pipeline, settings.clips, args.clips, source)
            for line in analyze_frames(iter_frames(video, source), worker, pipeline, video=info, weak=args.weak):
                out.write(json.dumps(line, separators=(",", ":")) + "\n")
                if line.get("type") == "frame":
                    progress.update()
        out.flush()
    except BrokenPipeError:  # `| head`: the reader left
        return 0
    finally:
        worker.stop()
        if writer is not None:
            writer.stop()
    return 0


def watch(args: argparse.Namespace) -> int:
    import os

    from service.watch import watch as follow

    key = args.key or os.environ.get("FALLDET_API_KEY", "")
    if not key:
        print("error: no API key: set FALLDET_API_KEY or pass --key", file=sys.stderr)
        return 2
    try:
        return follow(args.url, key, args.camera, limit=args.count)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def review_export(args: argparse.Namespace) -> int:
    from service.review_export import ExportError, export_reviews

    try:
        report = export_reviews(_settings(None), args.out, per_incident=args.per_incident,
                                val_percent=args.val_percent, force=args.force)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report.to_json()))
    print(f"{args.out}: images of people's rooms (mode 0600); keep them on this machine", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service", description="Real-time fall detection service.")
    commands = parser.add_subparsers(dest="command", required=True)

    p = commands.add_parser("serve", help="run the HTTP service (uvicorn)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--model", type=Path, help="ONNX model (default: FALLDET_MODEL or models/fall-detector.onnx)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.add_argument("--ssl-certfile", type=Path, help="serve HTTPS with this PEM certificate (chain); "
                   "default FALLDET_SSL_CERTFILE; docs/deploy.md")
    p.add_argument("--ssl-keyfile", type=Path, help="the certificate's PEM private key (default FALLDET_SSL_KEYFILE)")
    p.set_defaults(run=serve)

    p = commands.add_parser("analyze", help="analyse a video file: NDJSON results on stdout")
    p.add_argument("video", type=Path)
    p.add_argument("--model", type=Path, help="ONNX model (default: FALLDET_MODEL or models/fall-detector.onnx)")
    p.add_argument("--source", help="source name in the results (default: the file's stem)")
    p.add_argument("--quiet", action="store_true", help="no progress bar on stderr")
    p.add_argument("--weak", action="store_true", help="frame lines also list the tracked boxes under the "
                   "reporting threshold (`weak`), so `service.evaluate --replay` sees what the tracker saw")
    p.add_argument("--clips", type=Path, metavar="DIR", help="write an MP4 clip of every fall_alert into DIR "
                   "(FALLDET_CLIPS__PRE_S before the onset to FALLDET_CLIPS__POST_S after the alert)")
    p.set_defaults(run=analyze)

    p = commands.add_parser("watch", help="print a running service's live messages (NDJSON) on stdout")
    p.add_argument("camera", nargs="?", help="a camera id: its frame results and alerts (default: the "
                                             "alerts of every camera)")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="the service (default: %(default)s)")
    p.add_argument("--key", help="API key (default: FALLDET_API_KEY; prefer the variable: arguments "
                                 "show in the process list)")
    p.add_argument("--count", type=int, help="stop after this many messages")
    p.set_defaults(run=watch)

    p = commands.add_parser("review-export", help="reviewed alerts -> a YOLO data folder for "
                                                  "`python -m training finetune --site DIR`")
    p.add_argument("--out", type=Path, required=True, help="the data folder to write (new or empty)")
    p.add_argument("--per-incident", type=int, default=20, help="most frames of one incident (default %(default)s)")
    p.add_argument("--val-percent", type=float, default=25.0, help="share of incidents held out for the "
                   "before/after comparison (default %(default)s)")
    p.add_argument("--force", action="store_true", help="write into a folder that is not empty")
    p.set_defaults(run=review_export)

    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.command == "serve" else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
