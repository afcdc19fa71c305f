"""`GET /metrics`: the Prometheus default registry as text.

Every module defines its own metrics on prometheus_client's default registry next to the code that
updates them; this module only serves them. A plain route (not `make_asgi_app()` mounted, which
answers `/metrics` with a 307 to `/metrics/`). It needs an API key like every endpoint but liveness:
Prometheus sends it as a header (`http_headers`) or as the `api_key` query parameter (`params`).
"""
from __future__ import annotations

from fastapi import APIRouter, Depends, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from service.api.deps import require_api_key_or_query

router = APIRouter(tags=["health"])


@router.get("/metrics", dependencies=[Depends(require_api_key_or_query)], response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format"}})
def metrics() -> Response:
    """All service metrics in the Prometheus text exposition format."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
