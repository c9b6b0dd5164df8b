"""Compile every Triton kernel of rmkernels for NVIDIA GPUs ahead of time, without a GPU.

    python tools/triton_aot.py [--arch 90 80] [--json OUT]

Each public launcher runs on small CPU tensors with the kernels' launches intercepted; every
distinct launch (argument types, constexprs, num_warps) is compiled by Triton for each target
architecture down to a cubin, whose registers and stack (spills) ``cuobjdump`` reports. A kernel that only
the interpreter accepts fails here. Must run WITHOUT ``TRITON_INTERPRET``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

if os.environ.get("TRITON_INTERPRET") == "1":
    sys.exit("tools/triton_aot.py compiles real kernels: unset TRITON_INTERPRET")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
           torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
           torch.bool: "i1"}


def _arg_type(v) -> str:
    if isinstance(v, torch.Tensor):
        return "*" + _DTYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -(2**31) <= v < 2**31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"unsupported kernel argument {type(v).__name__}")


def capture_launches(workload) -> list:
    """Run ``workload()`` with every ``kernel[grid](...)`` recorded instead of launched."""
    launches = []
    real = JITFunction.__getitem__

    def fake_getitem(self, grid):
        def record(*args, **kwargs):
            launches.append((self, args, kwargs))
        return record

    JITFunction.__getitem__ = fake_getitem
    try:
        workload()
    finally:
        JITFunction.__getitem__ = real
    return launches


def compile_launch(fn: JITFunction, args, kwargs, arch: int) -> dict:
    names = fn.arg_names
    const_names = {names[i] for i in fn.constexprs}
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    sig, consts = {}, {}
    for name in names:
        if name in const_names:
            sig[name] = "constexpr"
            consts[name] = bound[name]
        else:
            sig[name] = _arg_type(bound[name])
    num_warps = kwargs.get("num_warps", 4)
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", arch, 32),
                       options={"num_warps": num_warps})
    regs, stack = _resource_usage(k.asm["cubin"])
    return {"kernel": fn.__name__, "arch": f"sm_{arch}", "num_warps": num_warps,
            "constexprs": {k_: v for k_, v in consts.items()}, "dtypes": "/".join(sorted({t for t in sig.values() if t.startswith("*f") or t.startswith("*bf")})),
            "registers": regs, "stack_bytes": stack}


def _resource_usage(cubin: bytes):
    """``(registers, spill bytes)`` of a cubin, from the cuobjdump that ships with Triton."""
    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "k.cubin")
        with open(path, "wb") as f:
            f.write(cubin)
        out = subprocess.run([cuobjdump, "-res-usage", path], capture_output=True, text=True).stdout
    regs = re.search(r"REG:(\d+)", out)
    if regs is None:
        raise RuntimeError(f"cuobjdump reported no register use:\n{out}")
    stack = re.search(r"STACK:(\d+)", out)
    return int(regs.group(1)), int(stack.group(1)) if stack else 0


def workloads():
    """Small CPU calls of each launcher that reach every kernel variant the public ops use."""
    from rmkernels.ops import linear_loss, rm_loss  # noqa: F401 (registers the ops)
    from rmkernels.ops import rm_stats  # noqa: F401

    def stats():
        for dt in (torch.bfloat16, torch.float16, torch.float32):
            z = torch.randn(4, 5000).to(dt)
            x = torch.randint(0, 5000, (4,))
            ctr = torch.arange(4)
            for temp in (0.0, 0.7):
                for split in (1, 3):
                    torch.ops.rmkernels.rm_stats_triton(z, x, ctr, 7, temp, 123, split, 0)

    def loss():
        for dt in (torch.bfloat16, torch.float32):
            z = torch.randn(4, 5000).to(dt)
            y = torch.randint(0, 5000, (4,))
            part = torch.tensor([0, 1, 2, -1])
            ce, lse = torch.ops.rmkernels.rm_ce_fwd(z, y, part, 0)
            torch.ops.rmkernels.rm_ce_bwd(z, y, part, lse, torch.ones(4), 0)
            torch.ops.rmkernels.rm_ce_fwd_grad_(z.clone(), y, part, torch.ones(4), 0)

    return {"rm_stats": stats, "rm_loss": loss}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    rows, seen = [], set()
    for op, work in workloads().items():
        for fn, a, kw in capture_launches(work):
            key = (fn.__name__, tuple(_arg_type(v) if not isinstance(v, (int, float)) or isinstance(v, bool) else type(v).__name__ for v in a),
                   tuple(sorted((k, str(v)) for k, v in kw.items())))
            if key in seen:
                continue
            seen.add(key)
            for arch in args.arch:
                row = compile_launch(fn, a, kw, arch)
                row["op"] = op
                rows.append(row)
                print(f"{row['op']:<9} {row['kernel']:<28} {row['arch']} warps={row['num_warps']} "
                      f"{row['dtypes']:<10} {row['constexprs']} regs={row['registers']} stack={row['stack_bytes']}B",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"compiled {len(rows)} kernel variants for sm_{', sm_'.join(map(str, args.arch))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
