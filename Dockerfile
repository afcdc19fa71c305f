# syntax=docker/dockerfile:1
#
# Images of the fall-detection project, one file, three targets:
#   service (the default, last stage): the FastAPI service on onnxruntime-gpu with the shipped
#            model. CUDA when the container is given a GPU, CPU otherwise. No torch.
#   train:   the training package with torch (the pinned `train` extra), for GPU training jobs.
#   camera:  a local RTSP camera simulator (Debian's GStreamer RTSP server) replaying a clip.
#
#   docker build -t falldet .                                  # service
#   docker build --target train -t falldet-train .
#   docker build --target camera -t falldet-camera .
#
# onnxruntime-gpu 1.31 is built for CUDA 13 and cuDNN 9: the base image carries both, so the
# CUDA provider loads when the NVIDIA container toolkit exposes a GPU, and the CPU provider
# runs when it does not (the service reports the providers in use on /readyz).

ARG CUDA_IMAGE=nvidia/cuda:13.0.2-cudnn-runtime-ubuntu24.04

# ---------------------------------------------------------------------------------------------
# Python (3.12 on Ubuntu 24.04) in a virtual environment; libgl1/libglib are what opencv needs.
FROM ${CUDA_IMAGE} AS python-base
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv libgl1 libglib2.0-0 \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# ---------------------------------------------------------------------------------------------
# The service's dependencies only (pyproject's main list, no extras), installed from the project
# metadata; the package itself runs from /app so that `models/` sits beside it as in a checkout.
FROM python-base AS service-deps
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY service/ service/
RUN pip install . \
 && pip uninstall -y falldet \
 && python -c "import importlib.util as u, sys; sys.exit('torch must not be in the service image' if u.find_spec('torch') else 0)" \
 && python -c "import onnxruntime, av, cv2, fastapi, paho.mqtt.client"

# ---------------------------------------------------------------------------------------------
# Training image: torch and the training package. Data is mounted at /data (FALLDET_DATA).
FROM python-base AS train
WORKDIR /app
COPY pyproject.toml README.md LICENSE ./
COPY service/ service/
COPY training/ training/
RUN pip install '.[train]' && pip uninstall -y falldet \
 && useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin falldet \
 && mkdir -p /app/runs && chown falldet /app/runs
ENV FALLDET_DATA=/data
USER falldet
ENTRYPOINT ["python", "-m", "training"]
CMD ["--help"]

# ---------------------------------------------------------------------------------------------
# Camera simulator: tools/rtsp_server.py needs the system python with gi/GstRtspServer.
# Mount a clip at /clips/cam1.mp4 (or pass other --mount arguments).
FROM debian:bookworm-slim AS camera
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-gi gir1.2-gst-rtsp-server-1.0 \
      gstreamer1.0-rtsp gstreamer1.0-plugins-base gstreamer1.0-plugins-good \
      gstreamer1.0-plugins-bad gstreamer1.0-plugins-ugly gstreamer1.0-libav \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin camera
COPY tools/rtsp_server.py /opt/camera/rtsp_server.py
USER camera
EXPOSE 8554
ENTRYPOINT ["/usr/bin/python3", "/opt/camera/rtsp_server.py"]
CMD ["--host", "0.0.0.0", "--port", "8554", "--mount", "cam1=/clips/cam1.mp4"]

# ---------------------------------------------------------------------------------------------
# The service (default target). State (alert store, snapshots, streams file) lives on a volume.
FROM python-base AS service
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin falldet \
 && mkdir -p /var/lib/falldet \
 && chown falldet:falldet /var/lib/falldet
COPY --from=service-deps /opt/venv /opt/venv
WORKDIR /app
COPY service/ service/
COPY models/ models/
ENV FALLDET_MODEL=/app/models/fall-detector.onnx \
    FALLDET_STATE_DIR=/var/lib/falldet
VOLUME ["/var/lib/falldet"]
USER falldet
EXPOSE 8000
# Liveness only: /healthz needs no API key. Keep the port in step with CMD.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=4)"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
