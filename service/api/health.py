"""Liveness and readiness.

Both answer without an API key: orchestrators probe them and Kubernetes probes cannot read a key
from a secret. `/readyz` says only whether this pod can take work and on which providers.
It is also 503 while events wait in the bus's store backlog (the alert store failed and they are
retried from memory), with a `reason`, so an orchestrator or an operator notices a pod that cannot
make alerts durable.
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


@router.get("/readyz", responses={503: {"description": "model not loaded, worker not running, or events "
                                                   "waiting for the alert store"}})
async def readyz(conn: HTTPConnection) -> JSONResponse:
    """Ready when the model is loaded, the inference worker runs and no event waits for the alert
    store; lists the providers in use. When not ready, `reason` says why."""
    runtime = getattr(conn.app.state, "runtime", None)
    worker = getattr(conn.app.state, "worker", None)
    bus = getattr(conn.app.state, "bus", None)
    model_loaded = runtime is not None
    worker_running = bool(worker is not None and worker.running)
    backlog = bus.backlog() if hasattr(bus, "backlog") else {"pending": 0, "last_error": None, "dropped": 0}
    store_ok = backlog["pending"] == 0
    reasons = []
    if not model_loaded:
        reasons.append("model not loaded")
    if not worker_running:
        reasons.append("inference worker not running")
    if not store_ok:
        reasons.append(f"{backlog['pending']} event(s) waiting for the alert store"
                       f" ({backlog['last_error']})")
    body = {"ready": not reasons, "reason": "; ".join(reasons) or None, "model_loaded": model_loaded,
            "worker_running": worker_running, "store_ok": store_ok,
            "store_backlog": backlog["pending"], "events_dropped": backlog["dropped"],
            "providers": list(getattr(runtime, "providers", [])),
            "model": getattr(getattr(runtime, "model_path", None), "name", None),
            "imgsz": getattr(runtime, "imgsz", None), "classes": list(getattr(runtime, "names", [])),
            "score_threshold": getattr(runtime, "score_threshold", None),
            "score_threshold_source": getattr(runtime, "score_threshold_source", None)}
    return JSONResponse(body, status_code=200 if body["ready"] else 503)
