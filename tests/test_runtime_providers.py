"""Issue 20, item 8: on a machine where CUDA cannot load, starting the runtime prints no red
onnxruntime library error, and one log line says which provider runs (and why not the GPU).

onnxruntime writes its errors from C++ straight to file descriptor 2, so the check runs the
runtime in a child process and reads everything it wrote there.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT
from service.cuda_check import cuda_problem

SCRIPT = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s: %(message)s")
from service.runtime import Runtime
print(Runtime(sys.argv[1], sys.argv[2:] or None).providers[0])
"""


def _start(model: Path, *providers: str) -> tuple[str, str]:
    done = subprocess.run([sys.executable, "-c", SCRIPT, str(model), *providers], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip(), done.stderr


def test_start_says_once_which_provider_runs_and_prints_no_library_error(tiny_model: Path) -> None:
    used, stderr = _start(tiny_model)
    assert "Failed to load library" not in stderr and "Failed to create CUDAExecutionProvider" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if "onnxruntime runs" in line]
    assert len(lines) == 1, stderr
    assert f"on {used}" in lines[0]
    problem = cuda_problem()
    if problem is None:  # a GPU machine: the GPU is used
        assert used == "CUDAExecutionProvider", stderr
    else:  # a CPU machine: CPU, quietly, with the reason in the same line
        assert used == "CPUExecutionProvider"
        assert f"CUDA not used: {problem}" in lines[0]
        assert "[E:onnxruntime" not in stderr and "[W:onnxruntime" not in stderr, stderr


def test_cuda_asked_for_by_name_falls_back_quietly_where_it_cannot_load(tiny_model: Path) -> None:
    used, stderr = _start(tiny_model, "CUDAExecutionProvider", "CPUExecutionProvider")
    assert "Failed to load library" not in stderr, stderr
    assert used == ("CUDAExecutionProvider" if cuda_problem() is None else "CPUExecutionProvider")
