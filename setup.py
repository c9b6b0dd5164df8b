"""Build script for the `rmkernels._C` extension (C++ CPU kernels, plus CUDA kernels where possible).

The CPU part is always built. The CUDA part (csrc/**/*.cu) is built only when the installed torch
has CUDA and nvcc is found; TORCH_CUDA_ARCH_LIST is honoured (default "8.0;9.0").
Set RMKERNELS_NO_EXT=1 to skip the extension entirely (the package then uses its eager references).
"""
import glob
import os
import shutil

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    if os.environ.get("RMKERNELS_NO_EXT") == "1":
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "**", "*.cpp"), recursive=True))
    cu = sorted(glob.glob(os.path.join("csrc", "**", "*.cu"), recursive=True))
    if not cpp:
        return [], {}
    import torch
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension, CUDA_HOME

    with_cuda = bool(cu) and torch.version.cuda is not None and (
        CUDA_HOME is not None or shutil.which("nvcc") is not None
    )
    if os.environ.get("RMKERNELS_FORCE_CPU_EXT") == "1":
        with_cuda = False
    # no -std flag: torch's BuildExtension picks the standard its headers need (C++20 for torch 2.13)
    cxx = ["-O3", "-fopenmp"] if os.name != "nt" else ["/O2"]
    define = []
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
        ext = CUDAExtension(
            "rmkernels._C",
            cpp + cu,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define + [("RMK_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math", "--expt-relaxed-constexpr", "-lineinfo"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = CppExtension(
            "rmkernels._C",
            cpp,
            include_dirs=[os.path.join(ROOT, "csrc")],
            define_macros=define,
            extra_compile_args={"cxx": cxx},
            extra_link_args=["-fopenmp"],
        )
    return [ext], {"build_ext": BuildExtension.with_options(use_ninja=shutil.which("ninja") is not None)}


ext_modules, cmdclass = _extensions()
setup(ext_modules=ext_modules, cmdclass=cmdclass)
