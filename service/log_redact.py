"""Keep API keys out of the server's logs.

uvicorn logs every request and WebSocket handshake with its query string
(`GET /metrics?api_key=...`, `"WebSocket /v1/events?api_key=..." [accepted]`), so a key sent as a
query parameter would land in the log, and from there in log collectors. This filter replaces the
value of every `api_key=` (and `key=`-like secrets of the same form) in a record's message and
arguments with `***`, keeping the arguments' positions (uvicorn's access formatter unpacks them).
"""
from __future__ import annotations

import logging
import re

SECRET_PARAM = re.compile(r"((?:api_key|apikey|access_token|token)=)[^&#\s\"']+", re.IGNORECASE)
LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


def redact(text: str) -> str:
    """`/metrics?api_key=abc&x=1` -> `/metrics?api_key=***&x=1`."""
    return SECRET_PARAM.sub(r"\1***", text)


def _clean(value: object) -> object:
    return redact(value) if isinstance(value, str) else value


class RedactSecrets(logging.Filter):
    """Rewrites the record in place; never drops one."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(_clean(a) for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: _clean(v) for k, v in record.args.items()}
        return True


def install() -> None:
    """Add the filter to uvicorn's loggers and to the root logger's handlers (what any other
    logger's records pass through); idempotent; call after uvicorn configured logging."""
    targets: list[logging.Filterer] = [logging.getLogger(name) for name in LOGGERS]
    targets += logging.getLogger().handlers
    for target in targets:
        if not any(isinstance(f, RedactSecrets) for f in target.filters):
            target.addFilter(RedactSecrets())
