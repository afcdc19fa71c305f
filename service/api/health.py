"""Liveness and readiness.

Both answer without an API key: orchestrators probe them and Kubernetes probes cannot read a key
from a secret. `/readyz` says only whether this pod can take work and on which providers.
Both are `async def` and only read attributes, so they run on the event loop itself: a thread pool
saturated by uploads or detections cannot make a healthy pod fail its probes.
"""
from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

router = APIRouter(tags=["health"])


@router.get("/healthz")
async def healthz() -> dict:
    """The process is up and its event loop answers."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "model not loaded or worker not running"}})
async def readyz(conn: HTTPConnection) -> JSONResponse:
    """Ready when the model is loaded and the inference worker runs; lists the providers in use."""
    runtime = getattr(conn.app.state, "runtime", None)
    worker = getattr(conn.app.state, "worker", None)
    model_loaded = runtime is not None
    worker_running = bool(worker is not None and worker.running)
    body = {"ready": model_loaded and worker_running, "model_loaded": model_loaded,
            "worker_running": worker_running,
            "providers": list(getattr(runtime, "providers", [])),
            "model": getattr(getattr(runtime, "model_path", None), "name", None),
            "imgsz": getattr(runtime, "imgsz", None), "classes": list(getattr(runtime, "names", []))}
    return JSONResponse(body, status_code=200 if body["ready"] else 503)
