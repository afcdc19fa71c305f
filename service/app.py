"""The FastAPI app factory: it receives its collaborators and starts and stops them with the app.

`create_app(settings)` builds the defaults (runtime on the settings' model, one inference worker,
alert store, delivery, bus, camera manager); tests and embedders pass their own instead. Everything
a route needs is on `app.state` and reached through `service.api.deps`.
"""
from __future__ import annotations

import asyncio
import logging
import sys
from contextlib import asynccontextmanager
from typing import AsyncIterator

from fastapi import FastAPI, Request
from fastapi_offline import FastAPIOffline
from fastapi.responses import JSONResponse
from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

from service import api_key_file, log_redact, metrics
from service.api import alerts, detect, health, streams as streams_api, videos, web, ws
from service.api import clips as clips_api, zones as zones_api
from service.api import model as model_api, reviews as reviews_api
from service.model_swap import ModelManager, ModelWatcher, active_model
from service.bus import EventBus
from service.clips import ClipService
from service.delivery import Delivery, DeliveryMetrics
from service.pipeline import SourcePipeline
from service.runtime import Runtime, runtime_from_settings
from service.settings import Settings
from service.store import AlertStore
from service.streams import StreamManager
from service.worker import InferenceWorker

log = logging.getLogger(__name__)


def resolve_api_keys(settings: Settings) -> list[str]:
    """The configured keys, else the key kept in the state folder (made once; never run open)."""
    if settings.api_keys:
        return list(settings.api_keys)
    key, path, created = api_key_file.load_or_create(settings.state_dir)
    print(f"FALLDET_API_KEYS is not set; the API key {'was made and ' if created else ''}is in {path.resolve()} "
          f"(mode 0600, kept across restarts; delete it for a new one)", file=sys.stderr, flush=True)
    return [key]


def create_app(settings: Settings, runtime: Runtime | None = None, worker: InferenceWorker | None = None,
               store: AlertStore | None = None, bus: EventBus | None = None,
               streams: StreamManager | None = None, delivery: Delivery | None = None) -> FastAPI:
    """The service app; collaborators left as None are built from `settings`."""
    if worker is None:
        if runtime is None:
            swapped = active_model(settings)  # a model swapped in before this restart stays in use
            if swapped is not None:
                log.info("using %s, swapped in before the restart (STATE_DIR/models/active.json)", swapped.name)
            runtime = runtime_from_settings(settings.model_copy(update={"model": swapped}) if swapped else settings)
        worker = InferenceWorker(runtime, settings.max_batch, settings.max_wait_ms)
    runtime = runtime or getattr(worker, "runtime", None)
    store = store or AlertStore(settings.db, settings.snapshot_dir, settings.retention, settings.clip_dir)
    clip_days = settings.retention.clip_max_age_days
    clips = ClipService(settings.clips, settings.clip_dir, store,
                        upload_max_age_s=clip_days * 86400 if clip_days is not None else None)
    delivery = delivery or Delivery(settings, store)
    bus = bus or EventBus(store, delivery)
    if streams is None:
        def pipeline_factory(source: str) -> SourcePipeline:
            return SourcePipeline(source, settings.pipeline, live=True,  # the model running now
                                  detection_threshold=getattr(worker.runtime, "score_threshold", None))

        streams = StreamManager(settings, worker, bus, pipeline_factory, clips=clips)

    tags_follow_results = hasattr(worker, "add_runtime_listener")

    def model_changed(current) -> None:
        app.state.runtime = current.runtime
        if not tags_follow_results:
            store.model_tag = current.tag()

    def results_from(runtime_now) -> None:
        """Alerts name the model whose results raised them: the tag changes when the worker hands out
        the swapped-in model's first results, not when the swap was asked for."""
        for loaded in (models.current, models.previous):
            if loaded is not None and loaded.runtime is runtime_now:
                store.model_tag = loaded.tag()

    models = ModelManager(settings, worker, runtime, on_change=model_changed)
    store.model_tag = models.current.tag()
    if tags_follow_results:
        worker.add_runtime_listener(results_from)
    watcher = ModelWatcher(models, settings.model_watch_dir, settings.model_watch_interval_s) \
        if settings.model_watch_dir is not None else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log_redact.install()  # here: after uvicorn has configured its loggers
        bus.bind_loop(asyncio.get_running_loop())
        collector = _register(DeliveryMetrics(store, delivery))
        worker.start()
        delivery.start()
        await asyncio.to_thread(streams.start)
        if watcher is not None:
            watcher.start()
        log.info("service ready: model %s on %s", getattr(getattr(runtime, "model_path", None), "name", "?"),
                 getattr(runtime, "providers", "?"))
        try:
            yield
        finally:
            if watcher is not None:
                await asyncio.to_thread(watcher.stop)
            await asyncio.to_thread(streams.stop)  # publishes the cameras' last events first
            await asyncio.to_thread(clips.stop)  # clips cut short by the stop are written
            await asyncio.to_thread(bus.close)  # a last try to store events the store refused; logs any lost
            await asyncio.to_thread(delivery.stop)
            await asyncio.to_thread(worker.stop)
            if collector is not None:
                REGISTRY.unregister(collector)
            bus.bind_loop(None)
            store.close()

    # /docs loads Swagger UI from the installed fastapi-offline package, not from a CDN: the service
    # often runs on a camera network with no internet. No /redoc: ReDoc still fetches its logo online.
    app = FastAPIOffline(title="falldet", version="0.1.0", lifespan=lifespan, redoc_url=None,
                         description="Real-time fall detection over RTSP cameras, uploaded videos and images.")
    app.state.settings = settings
    app.state.admin_keys = list(settings.admin_keys)
    app.state.api_keys = resolve_api_keys(settings) + app.state.admin_keys  # an admin key reads too
    app.state.models = models
    app.state.runtime = runtime
    app.state.worker = worker
    app.state.store = store
    app.state.delivery = delivery
    app.state.bus = bus
    app.state.streams = streams
    app.state.clips = clips

    for module in (health, metrics, detect, videos, streams_api, zones_api, alerts, clips_api, model_api, reviews_api, ws, web):
        app.include_router(module.router)
    app.add_exception_handler(Exception, _internal_error)
    return app


def _register(collector: Collector) -> Collector | None:
    """Export the alert and delivery gauges, unless another app in this process already does."""
    try:
        REGISTRY.register(collector)
    except ValueError:
        log.warning("alert metrics are already exported by another app in this process")
        return None
    return collector


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Any unexpected error: answered without a trace (the server logs the trace: Starlette re-raises)."""
    log.error("unhandled %s on %s %s", type(exc).__name__, request.method, request.url.path)
    return JSONResponse({"detail": "internal error"}, status_code=500)
