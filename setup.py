"""Build dfkd_fast and its C++/CUDA extension dfkd_fast._C.

A CppExtension is always built from csrc/*.cpp and csrc/cpu/*.cpp. The CUDA sources (csrc/cuda/*.cu) are added, as a
CUDAExtension, when torch was built with CUDA and a toolkit is found, or when FORCE_CUDA=1. Set DFKD_FAST_NO_EXT=1
to skip the extension entirely (the package then runs its reference backends).
"""

import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


RUNTIME_DEPS = ["numpy", "tqdm", "pillow"]


def _extensions():
    """(ext_modules, cmdclass, torch requirement)."""
    if os.environ.get("DFKD_FAST_NO_EXT") == "1":
        return [], {}, "torch>=2.6"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

    def rel(pattern):
        return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))

    sources = rel("csrc/*.cpp") + rel("csrc/cpu/*.cpp")
    cuda_sources = rel("csrc/cuda/*.cu")
    force_cuda = os.environ.get("FORCE_CUDA") == "1"
    # torch.cuda.is_available() is False on a GPU-less build box even with CUDA torch: ask the build instead.
    use_cuda = bool(cuda_sources) and (force_cuda or (torch.version.cuda is not None and CUDA_HOME is not None))
    cxx = ["-O3", "-std=c++17"] if torch.__version__ < "2.10" else ["-O3"]
    # -fopenmp lets at::parallel_for use threads when torch was built with OpenMP.
    if "OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
    include_dirs = [os.path.join(ROOT, "csrc")]
    if use_cuda:
        ext = CUDAExtension(
            "dfkd_fast._C",
            sources + cuda_sources,
            include_dirs=include_dirs,
            define_macros=[("WITH_CUDA", None)],
            extra_compile_args={
                "cxx": cxx,
                "nvcc": ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
                + os.environ.get("NVCC_FLAGS", "").split(),
            },
        )
    else:
        ext = CppExtension("dfkd_fast._C", sources, include_dirs=include_dirs, extra_compile_args={"cxx": cxx})
    # The compiled extension only loads into the torch it was built against (C++ ABI): require exactly that one.
    requirement = "torch==" + torch.__version__.split("+")[0]
    kind = "C++ and CUDA" if use_cuda else "C++"

    class BuildWithNotice(BuildExtension.with_options(use_ninja=True)):
        def run(self):  # a compile of minutes with no output looks like a hang
            print(f"building dfkd_fast._C ({kind}, torch {torch.__version__}): this takes a few minutes",
                  file=sys.stderr, flush=True)
            super().run()

    return [ext], {"build_ext": BuildWithNotice}, requirement


ext_modules, cmdclass, torch_requirement = _extensions()

setup(
    # kernels/ (the Triton sources) lives beside csrc/ at the top and installs as dfkd_fast.kernels:
    # nothing outside the dfkd_fast namespace is installed.
    packages=find_packages(include=["dfkd_fast", "dfkd_fast.*"]) + ["dfkd_fast.kernels"],
    package_dir={"dfkd_fast.kernels": "kernels"},
    install_requires=[torch_requirement, *RUNTIME_DEPS],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    include_package_data=False,
)
