"""`/v1/model`: which detector runs (any key), swapping in a new file and rolling back (admin key).

The swap itself is `service.model_swap.ModelManager`; this router reads the upload under the size
limit, hands it over in a worker thread (loading and warming a model takes a second or more, never
on the event loop) and turns a refusal into a 422 whose `detail` says what is wrong with the file.
"""
from __future__ import annotations

import asyncio
from typing import Annotated, Iterator

from fastapi import APIRouter, Depends, HTTPException, Request, status
from starlette.requests import HTTPConnection

from service.api.deps import AdminKey, limited_request, read_file_field, require_api_key, too_large
from service.model_swap import ModelManager, ModelRejected

router = APIRouter(prefix="/v1/model", tags=["model"])


def get_models(conn: HTTPConnection) -> ModelManager:
    manager = getattr(conn.app.state, "models", None)
    if manager is None:
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail="no model manager in this app")
    return manager


ModelsDep = Annotated[ModelManager, Depends(get_models)]


@router.get("", dependencies=[Depends(require_api_key)])
def get_model(models: ModelsDep) -> dict:
    """The running model: file, sha256, metadata figures (operating point, metrics), fine-tune
    provenance, and the previous model kept for a rollback."""
    return models.info()


@router.put("", responses={403: {"description": "not an admin key"}, 413: {"description": "file too large"},
                           422: {"description": "the file was refused; the running model stays"}})
async def put_model(request: Request, models: ModelsDep, _: AdminKey) -> dict:
    """Swap in a new ONNX file without a restart: the body is the file (`application/octet-stream`)
    or a multipart field `file`. It is checked (model contract, a `fall` class) and warmed up first;
    the inference worker takes it at its next batch. Admin key only (`FALLDET_ADMIN_KEYS`)."""
    max_bytes = int(request.app.state.settings.max_model_mb * 2**20)
    limited = limited_request(request, max_bytes)
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        upload = await read_file_field(limited)
        try:
            data = await upload.read()
        finally:
            await upload.close()
    else:
        data = await limited.body()
    if len(data) > max_bytes:
        raise too_large(max_bytes)
    if not data:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail="empty upload: send the ONNX file as the body")

    def chunks() -> Iterator[bytes]:
        yield data

    def swap() -> dict:
        path = models.store_upload(chunks())
        return models.swap(path, source="upload")

    try:
        return await asyncio.to_thread(swap)
    except ModelRejected as exc:
        models.last_error = str(exc)
        raise HTTPException(status.HTTP_422_UNPROCESSABLE_CONTENT, detail=f"model refused, the running model "
                                                                          f"stays: {exc}") from None


@router.post("/rollback", responses={409: {"description": "no previous model"}})
def rollback(models: ModelsDep, _: AdminKey) -> dict:
    """Go back to the model that ran before the last swap (admin key only)."""
    try:
        return models.rollback()
    except LookupError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, detail=str(exc)) from None
