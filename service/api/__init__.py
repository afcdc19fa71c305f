"""The HTTP and WebSocket API: one router per resource, shared dependencies in `deps.py`."""
