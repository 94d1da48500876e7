"""Compile check of the CUDA sources: every csrc/**/*.cu must build with nvcc against torch's headers.

CI machines have a CUDA toolkit but no GPU (and a CPU torch wheel), so this is how the .cu files are checked there;
the flags are the ones of DESIGN.md ("Tests and CI"). Skips where nvcc is not on PATH.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sysconfig

import pytest
from torch.utils import cpp_extension

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SOURCES = sorted(glob.glob(os.path.join(ROOT, "csrc", "**", "*.cu"), recursive=True))
NVCC = shutil.which("nvcc")
FLAGS = [
    "-c",
    "-std=c++17",
    "-DC10_CUDA_NO_CMAKE_CONFIGURE_FILE",
    "--expt-relaxed-constexpr",
    "-gencode",
    "arch=compute_90,code=sm_90",
    "-DWITH_CUDA",
]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH")
@pytest.mark.parametrize("source", SOURCES, ids=lambda path: os.path.relpath(path, ROOT))
def test_nvcc_compiles(source: str, tmp_path) -> None:
    includes = [*cpp_extension.include_paths(), sysconfig.get_paths()["include"], os.path.join(ROOT, "csrc")]
    cmd = [NVCC, *FLAGS, *(f"-I{path}" for path in includes), source, "-o", str(tmp_path / "out.o")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"nvcc failed on {os.path.relpath(source, ROOT)}:\n{result.stderr[-6000:]}"
    assert (tmp_path / "out.o").stat().st_size > 0
