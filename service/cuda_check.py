"""Whether onnxruntime's CUDA provider can load here, found out before a session asks for it.

onnxruntime-gpu lists CUDA as available on every machine; asking for it where its libraries or the
driver are missing prints a red `Failed to load library libonnxruntime_providers_cuda.so` error
from C++ at every start (no Python logging can silence it), then falls back to CPU. Loading the
same libraries with `ctypes` first answers the question quietly, with the reason.
"""
from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import onnxruntime as ort

_CAPI = Path(ort.__file__).resolve().parent / "capi"


def _load(name: str, global_: bool = False) -> None:
    ctypes.CDLL(name, mode=ctypes.RTLD_GLOBAL if global_ else ctypes.RTLD_LOCAL)


def _driver_problem() -> str | None:
    """None when the CUDA driver loads and sees at least one GPU."""
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return "no NVIDIA driver (libcuda.so.1 not found)"
    count = ctypes.c_int(0)
    if cuda.cuInit(0) != 0 or cuda.cuDeviceGetCount(ctypes.byref(count)) != 0 or count.value < 1:
        return "the NVIDIA driver sees no GPU"
    return None


@functools.cache
def cuda_problem() -> str | None:
    """None when CUDA can run here; else why not, in one short phrase (cached: asked once)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider"
    problem = _driver_problem()
    if problem:
        return problem
    try:
        _load(str(_CAPI / "libonnxruntime_providers_shared.so"), global_=True)
        _load(str(_CAPI / "libonnxruntime_providers_cuda.so"))
    except OSError as exc:  # "libcublasLt.so.13: cannot open shared object file: ..."
        return f"CUDA libraries missing ({str(exc).split(':')[0].strip()})"
    return None
