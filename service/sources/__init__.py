"""Where frames come from: uploaded or local videos (`upload.py`) and RTSP cameras (`rtsp.py`)."""
