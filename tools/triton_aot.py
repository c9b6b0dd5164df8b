"""Compile every Triton kernel of rmkernels for NVIDIA GPUs ahead of time, without a GPU.

    python tools/triton_aot.py [--arch 90 80] [--json OUT] [--ops linear_stats ...]

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
from triton._C.libtriton import native_specialize_impl  # noqa: E402
from triton.backends.compiler import BaseBackend, GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
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
    """Run ``workload()`` with every ``kernel[grid](...)`` recorded instead of launched.

    A launch of a ``triton.autotune`` kernel is recorded once per config its pruner keeps for those
    arguments (each config's meta-parameters, warps and stages), as the autotuner would compile them.
    """
    launches = []
    real_jit, real_tuner = JITFunction.__getitem__, Autotuner.__getitem__

    def fake_getitem(self, grid):
        def record(*args, **kwargs):
            launches.append((self, args, kwargs))
        return record

    def fake_tuner_getitem(self, grid):
        def record(*args, **kwargs):
            self.nargs = dict(zip(self.arg_names, args))
            try:
                configs = self.prune_configs(kwargs)
            finally:
                self.nargs = None
            for cfg in configs:
                launches.append((self.fn, args, {**kwargs, **cfg.all_kwargs()}))
        return record

    JITFunction.__getitem__ = fake_getitem
    Autotuner.__getitem__ = fake_tuner_getitem
    try:
        workload()
    finally:
        JITFunction.__getitem__ = real_jit
        Autotuner.__getitem__ = real_tuner
    return launches


def _jit_specialization(fn: JITFunction, bound: dict):
    """``(signature, constexprs, attrs)`` as the JIT builds them: integers equal to 1 become
    constexprs and multiples of 16 (and 16-byte aligned pointers) get a divisibility attribute,
    except where the kernel says ``do_not_specialize`` / ``do_not_specialize_on_alignment``."""
    sig, consts, attrs = {}, {}, {}
    for i, kp in enumerate(fn.params):
        name = kp.name
        if kp.is_constexpr:
            sig[name] = "constexpr"
            consts[name] = bound[name]
            continue
        ty, spec = native_specialize_impl(BaseBackend, bound[name], kp.is_const, not kp.do_not_specialize,
                                          not kp.do_not_specialize_on_alignment)
        sig[name] = ty
        if ty == "constexpr":
            consts[name] = bound[name]
        elif isinstance(spec, str) and spec:
            attrs[(i,)] = BaseBackend.parse_attr(spec)
    return sig, consts, attrs


def compile_launch(fn: JITFunction, args, kwargs, arch: int) -> dict:
    names = fn.arg_names
    bound = dict(zip(names, args))
    bound.update({k: v for k, v in kwargs.items() if k in names})
    sig, consts, attrs = _jit_specialization(fn, bound)
    num_warps = kwargs.get("num_warps", 4)
    options = {"num_warps": num_warps}
    if kwargs.get("num_stages") is not None:
        options["num_stages"] = kwargs["num_stages"]
    k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts, attrs=attrs),
                       target=GPUTarget("cuda", arch, 32), options=options)
    regs, stack = _resource_usage(k.asm["cubin"])
    return {"kernel": fn.__name__, "arch": f"sm_{arch}", "num_warps": num_warps,
            "num_stages": options.get("num_stages"), "shared_bytes": k.metadata.shared,
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
    from rmkernels.ops import linear_stats, rm_stats  # noqa: F401

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

    def linear_stats():
        # rm_linear_stats' launcher with the tuning the GPU would do: the autotuned partial kernel
        # (every config its pruner keeps) for each row tile (N 1/16 -> 16 rows, 32, 64, 200 -> 128),
        # argmax and sampling epilogues, split on/off, bias / suppression, mask ids 0, 1, 16, V-1;
        # bf16 everywhere, fp16 and fp32 on the smallest and largest row tiles; plus a layout whose D
        # and strides are not multiples of 16 (the single-stage configs)
        V, D = 5000, 96
        plan = {torch.bfloat16: [(1, 0, 0.0, 0), (16, 1, 0.7, 1), (32, 0, 0.0, 16), (32, 1, 0.7, V - 1),
                                 (64, 0, 0.7, 0), (64, 1, 0.0, 1), (200, 0, 0.0, 16), (200, 1, 0.7, V - 1)],
                torch.float16: [(16, 0, 0.0, 1), (200, 0, 0.0, V - 1)],
                torch.float32: [(16, 0, 0.0, 0), (16, 1, 0.7, 16), (200, 0, 0.0, 1), (200, 1, 0.7, V - 1)]}
        for dt, calls in plan.items():
            W = torch.randn(V + 8, D).to(dt)  # embedding_size > vocab_size
            b = torch.randn(V + 8).to(dt)
            sup = torch.zeros(V, dtype=torch.int8)
            for N, split, temp, mask_id in calls:
                h = torch.randn(N, D).to(dt)
                x = torch.randint(0, V, (N,))
                torch.ops.rmkernels.linear_stats_triton(h, W, b if temp else None, sup if temp else None, x,
                                                        torch.arange(N), V, mask_id, 1.0, temp, 123, False,
                                                        split, 0, 0, 0)
        for N in (7, 200):  # D = 99: no divisibility anywhere
            h = torch.randn(N, 99).to(torch.bfloat16)
            W2 = torch.randn(V, 99).to(torch.bfloat16)
            torch.ops.rmkernels.linear_stats_triton(h, W2, None, None, torch.zeros(N, dtype=torch.int64),
                                                    torch.arange(N), V, 3, 1.0, 0.0, 1, False, 0, 0, 0, 0)

    return {"rm_stats": stats, "rm_loss": loss, "linear_stats": linear_stats}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--json")
    ap.add_argument("--ops", nargs="+", help="only these workloads (default: all)")
    args = ap.parse_args(argv)
    rows, seen = [], set()
    for op, work in workloads().items():
        if args.ops and op not in args.ops:
            continue
        for fn, a, kw in capture_launches(work):
            bound = dict(zip(fn.arg_names, a))
            bound.update({k: v for k, v in kw.items() if k in fn.arg_names})
            sig, consts, attrs = _jit_specialization(fn, bound)
            key = (fn.__name__, tuple(sorted(sig.items())), tuple(sorted((k, str(v)) for k, v in consts.items())),
                   tuple(sorted((k, str(v)) for k, v in attrs.items())), kw.get("num_warps"), kw.get("num_stages"))
            if key in seen:
                continue
            seen.add(key)
            for arch in args.arch:
                row = compile_launch(fn, a, kw, arch)
                row["op"] = op
                rows.append(row)
                print(f"{row['op']:<12} {row['kernel']:<28} {row['arch']} warps={row['num_warps']} "
                      f"stages={row['num_stages']} {row['dtypes']:<10} {row['constexprs']} regs={row['registers']} "
                      f"stack={row['stack_bytes']}B smem={row['shared_bytes']}B", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"compiled {len(rows)} kernel variants for sm_{', sm_'.join(map(str, args.arch))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
