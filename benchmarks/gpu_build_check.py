"""Check the build through the package, as a user would: ``import torch, rmkernels``.

    python benchmarks/gpu_build_check.py --out DIR [--dry-run]

``python -c "import rmkernels._C"`` alone fails even after a good build (the extension needs
torch's libraries loaded first), so this goes through ``rmkernels._ext.extension_available``.
Writes ``DIR/build.json`` / ``.md``: one row per ``torch.ops.rmkernels`` operator with the dispatch
keys it has kernels for (C++ CPU / CUDA kernels of ``rmkernels._C``; Triton custom ops register
CompositeExplicitAutograd) and whether the extension is usable on CPU and CUDA. Exit status 1 when
the extension is missing, or (on a GPU) was built without its CUDA kernels.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _gpu_common import DEV, Results, device_info, parse_args  # noqa: E402

import torch  # noqa: E402

KEYS = ("CPU", "CUDA", "CompositeExplicitAutograd", "Meta", "Autograd")
# what later GPU scripts and the CUDA tests may need (the lent machine has no network to install any)
OPTIONAL = ("numpy", "pytest", "hypothesis", "safetensors", "transformers", "flash-attn", "flash_attn", "ninja",
            "setuptools", "ortools")


def _version(pkg: str) -> str:
    import importlib.metadata

    try:
        return importlib.metadata.version(pkg)
    except importlib.metadata.PackageNotFoundError:
        return "absent"


def dispatch_keys(op: str) -> list[str]:
    """Dispatch keys with a kernel registered for ``op`` (from torch's dispatcher table)."""
    keys = []
    for line in torch._C._dispatch_dump(op).splitlines():
        head, sep, rest = line.partition(": registered at")
        key = head.replace("[alias]", "").strip()
        if sep and key != "debug" and "(inactive)" not in key:
            keys.append(key)
    return keys


def main():
    args = parse_args(__doc__)
    import rmkernels  # noqa: F401  (imports torch first, then the extension)
    import rmkernels.ops.history_embed  # noqa: F401  (registers fakes / autograd)
    import rmkernels.ops.linear_loss  # noqa: F401
    import rmkernels.ops.rm_loss  # noqa: F401
    import rmkernels.ops.rm_stats  # noqa: F401
    from rmkernels import _ext

    meta = device_info()
    meta["extension"] = _ext._C.__file__ if _ext._C is not None else f"not loaded: {_ext._C_ERROR}"
    meta["extension_cpu"] = _ext.extension_available("cpu")
    meta["extension_cuda"] = _ext.extension_available("cuda") if DEV == "cuda" else "n/a (dry run)"
    meta["packages"] = {pkg: _version(pkg) for pkg in OPTIONAL}
    ops = sorted(n for n in torch._C._dispatch_get_all_op_names() if n.startswith("rmkernels::"))
    res = Results(args.out, "build", meta, ["op", "kernels"] + list(KEYS) + ["other keys"])
    for op in ops:
        keys = dispatch_keys(op)
        impl = "C++ (rmkernels._C)" if any(k in ("CPU", "CUDA") for k in keys) else "Triton / Python custom op"
        res.add({"op": op, "kernels": impl, **{k: "x" if k in keys else "-" for k in KEYS},
                 "other keys": ", ".join(k for k in keys if k not in KEYS)})
    ok = meta["extension_cpu"] and (DEV != "cuda" or meta["extension_cuda"])
    res.note(f"extension usable on CPU: {meta['extension_cpu']}; on CUDA: {meta['extension_cuda']}")
    res.note("packages: " + ", ".join(f"{k} {v}" for k, v in meta["packages"].items()))
    if not ok:
        res.note("the extension is missing or has no CUDA kernels: ext ops fall back to the eager reference")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
