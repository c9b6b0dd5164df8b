"""Compile every Triton kernel of rmkernels for NVIDIA GPUs ahead of time, without a GPU.

    python tools/triton_aot.py [--arch 90 80] [--json OUT] [--ops rm_stats linear_stats ...]

Each public launcher runs on small CPU tensors with the kernels' launches intercepted. Every launch
is specialised exactly as Triton's JIT would specialise it on a GPU -- through the JITFunction's own
binder (``create_function_from_signature`` with the target's backend): an integer argument equal to
1 becomes a ``constexpr``, integers divisible by 16 and 16-byte aligned pointers get a
``tt.divisibility`` attribute, unless the kernel marks the argument ``do_not_specialize``. Each
distinct specialisation (signature, constexprs, attributes, options) is compiled by Triton for every
target architecture down to a cubin, whose registers and stack (spills) ``cuobjdump`` reports. A
kernel that only the interpreter accepts, or that fails to compile for some specialisation the JIT
would pick at run time (e.g. ``mask_id == 1`` turning into a constexpr), fails here.

The workloads therefore hit the integer values that specialise: ``mask_id`` 0, 1, 16 and ``V - 1``,
one row (``L1 == 1``), ``V == 1``, a row stride of 1, vocabularies divisible by 16 and not, aligned
and unaligned (sliced) logits, strided token / label / counter tensors. Must run WITHOUT
``TRITON_INTERPRET``.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
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
from triton.compiler import ASTSource, make_backend  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402

_DTYPES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64",
           torch.int64: "i64", torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8",
           torch.bool: "i1"}


# ----------------------------------------------------------------------------------------------
# Capturing launches
# ----------------------------------------------------------------------------------------------
def capture_launches(workload) -> list:
    """Run ``workload()`` with every ``kernel[grid](...)`` recorded instead of launched.

    A launch of a ``triton.autotune`` kernel is recorded once per config its pruner keeps for those
    arguments (the config's meta-parameters, warps and stages), as the autotuner would compile them.
    """
    import rmkernels._utils as utils

    launches = []
    real, real_tuner, real_interp = JITFunction.__getitem__, Autotuner.__getitem__, utils.triton_interpret

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
    utils.triton_interpret = lambda: True  # the public functions accept impl="triton" on CPU tensors
    try:
        workload()
    finally:
        JITFunction.__getitem__ = real
        Autotuner.__getitem__ = real_tuner
        utils.triton_interpret = real_interp
    return launches


# ----------------------------------------------------------------------------------------------
# Specialisation: what the JIT would compile for a launch
# ----------------------------------------------------------------------------------------------
def _binder_specialization(fn: JITFunction, backend, args, kwargs):
    """``(bound_args, specialization, options)`` from the JITFunction's own binder (the code path of
    ``JITFunction.run`` on a GPU, with ``backend`` in place of the active device's)."""
    from triton.runtime.jit import create_function_from_signature

    binder = create_function_from_signature(fn.signature, fn.params, backend)
    return binder(*args, **kwargs)


def _replica_specialization(fn: JITFunction, args, kwargs):
    """The same specialisation written out (used when the binder's interface changes across Triton
    versions, and checked against the binder on every launch when both are available).

    Rules of Triton 3.x: constexpr parameters are constants; an int argument equal to 1 becomes the
    constant 1 unless ``do_not_specialize``; an int divisible by 16 and a tensor whose data pointer
    is 16-byte aligned get the divisibility attribute ``"D"`` unless ``do_not_specialize`` (ints) /
    ``do_not_specialize_on_alignment``; floats and bools are never specialised.
    """
    names = [p.name for p in fn.params]
    bound = dict(zip(names, args))
    for p in fn.params:
        if p.name in kwargs:
            bound[p.name] = kwargs[p.name]
        elif p.name not in bound and p.has_default:
            bound[p.name] = p.default
    spec = []
    for p in fn.params:
        v = bound[p.name]
        if p.is_constexpr:
            spec.append(("constexpr", v))
        elif isinstance(v, torch.Tensor):
            aligned = v.data_ptr() % 16 == 0 and not p.do_not_specialize_on_alignment and not p.do_not_specialize
            spec.append(("*" + _DTYPES[v.dtype], "D" if aligned else ""))
        elif isinstance(v, bool):
            spec.append(("u1", None))
        elif isinstance(v, int):
            ty = "i32" if -(2**31) <= v < 2**31 else ("u64" if v >= 2**63 else "i64")
            if p.do_not_specialize:
                spec.append((ty, None))
            elif v == 1:
                spec.append(("constexpr", 1))
            else:
                spec.append((ty, "D" if v % 16 == 0 and not p.do_not_specialize_on_alignment else ""))
        elif isinstance(v, float):
            spec.append(("fp32", None))
        else:
            raise TypeError(f"unsupported kernel argument {p.name}: {type(v).__name__}")
    options = {k: v for k, v in kwargs.items() if k not in names}
    return bound, spec, options


def specialise(fn: JITFunction, args, kwargs, backend) -> dict:
    """``{"signature", "constexprs", "attrs", "options", "key"}`` of the kernel the JIT would build."""
    from triton._utils import find_paths_if, get_iterable_path

    try:
        bound, spec, _ = _binder_specialization(fn, backend, args, kwargs)
        via = "binder"
    except (ImportError, TypeError, AttributeError) as exc:  # another Triton's interface
        print(f"warning: Triton's binder unavailable ({exc}); using the replica rules", file=sys.stderr)
        bound, spec, _ = _replica_specialization(fn, args, kwargs)
        via = "replica"
    spec = [tuple(s) for s in spec]
    if via == "binder":  # keep the replica honest: it must agree with the JIT
        rep = _replica_specialization(fn, args, kwargs)[1]
        if [s[0] for s in rep] != [s[0] for s in spec] or \
                [s[1] for s in rep if s[0] != "constexpr"] != [s[1] for s in spec if s[0] != "constexpr"]:
            raise AssertionError(f"{fn.__name__}: replica specialisation {rep} != binder {spec}")
    names = [p.name for p in fn.params]
    sigvals = [s[0] for s in spec]
    signature = dict(zip(names, sigvals))
    values = list(bound.values()) if isinstance(bound, dict) else list(bound)
    constexprs = {path: get_iterable_path(values, path)
                  for path in find_paths_if(sigvals, lambda _, v: v == "constexpr")}
    attrvals = ["" if s[0] == "constexpr" else s[1] for s in spec]
    attrs = {path: backend.parse_attr(get_iterable_path(attrvals, path))
             for path in find_paths_if(attrvals, lambda _, x: isinstance(x, str))}
    options = {k: v for k, v in kwargs.items() if k not in names}
    key = (fn.__name__, tuple(sigvals), tuple(sorted((str(k), repr(v)) for k, v in constexprs.items())),
           tuple(sorted((str(k), repr(v)) for k, v in attrs.items())), tuple(sorted(options.items())))
    return {"signature": signature, "constexprs": constexprs, "attrs": attrs, "options": options, "key": key}


def compile_launch(fn: JITFunction, args, kwargs, arch: int, spec: dict | None = None) -> dict:
    target = GPUTarget("cuda", arch, 32)
    backend = make_backend(target)
    spec = spec or specialise(fn, args, kwargs, backend)
    opts = backend.parse_options(dict(spec["options"]))
    src = ASTSource(fn, spec["signature"], spec["constexprs"], spec["attrs"])
    try:
        k = triton.compile(src, target=target, options=opts.__dict__)
    except Exception as exc:
        raise RuntimeError(f"{fn.__name__} failed to compile for sm_{arch} with the JIT's specialisation "
                           f"constexprs={_names(fn, spec['constexprs'])} divisible={_divisible(fn, spec['attrs'])}: "
                           f"{type(exc).__name__}: {str(exc)[:2000]}") from exc
    regs, stack = _resource_usage(k.asm["cubin"])
    return {"kernel": fn.__name__, "arch": f"sm_{arch}", "num_warps": opts.num_warps, "num_stages": opts.num_stages,
            "shared_bytes": k.metadata.shared, "constexprs": _names(fn, spec["constexprs"]),
            "divisible": _divisible(fn, spec["attrs"]),
            "dtypes": "/".join(sorted({t for t in spec["signature"].values() if t.startswith(("*f", "*bf"))})),
            "registers": regs, "stack_bytes": stack}


def _names(fn, by_path: dict) -> dict:
    names = [p.name for p in fn.params]
    return {names[p[0]]: (v if isinstance(v, (int, float, bool, str)) else str(v)) for p, v in by_path.items()}


def _divisible(fn, attrs: dict) -> list:
    names = [p.name for p in fn.params]
    return sorted(names[p[0]] for p, a in attrs.items() if a)


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


# ----------------------------------------------------------------------------------------------
# Workloads
# ----------------------------------------------------------------------------------------------
def workloads():
    """Small CPU calls of each launcher that reach every kernel variant the public ops use, and the
    integer values the JIT specialises (1, multiples of 16) in every integer argument."""
    from rmkernels import rm_linear_loss, rm_linear_stats, rm_loss, rm_stats  # noqa: F401 (registers the ops)

    op = torch.ops.rmkernels

    def stats():
        # dtypes x sampling x single-pass / split-vocabulary; V = 5008 (divisible by 16, as real
        # vocabularies are) for the half types, V = 5000 (not) for float32
        for dt, V in ((torch.bfloat16, 5008), (torch.float16, 5008), (torch.float32, 5000)):
            z = torch.randn(4, V).to(dt)
            x = torch.randint(0, V, (4,))
            ctr = torch.arange(4)
            for temp in (0.0, 0.7):
                for split in (1, 3):
                    op.rm_stats_triton(z, x, ctr, 7, temp, 123, split, 0)
        # integer arguments the JIT specialises: mask_id 0 / 1 / 16 / V - 1, seed key 1 and 16
        z = torch.randn(4, 5008).to(torch.bfloat16)
        x = torch.randint(0, 5008, (4,))
        for mask_id in (0, 1, 16, 5007):
            for seed in (1, 16, 123):
                op.rm_stats_triton(z, x, torch.arange(4), mask_id, 0.7, seed, 1, 0)
                op.rm_stats_triton(z, x, torch.arange(4), mask_id, 0.0, seed, 3, 0)
        # one row (L1 == 1, strides 0) with mask_id 1: both paths when sampling, single pass otherwise
        op.rm_stats_triton(z[:1], x[:1], torch.arange(1), 1, 0.7, 1, 1, 0)
        op.rm_stats_triton(z[:1], x[:1], torch.arange(1), 1, 0.7, 1, 3, 0)
        op.rm_stats_triton(z[:1], x[:1], torch.arange(1), 1, 0.0, 1, 1, 0)
        # V == 1 (and so a row stride of 1)
        for temp in (0.0, 0.7):
            op.rm_stats_triton(torch.randn(3, 1).to(torch.bfloat16), torch.zeros(3, dtype=torch.long),
                               torch.arange(3), 0, temp, 5, 1, 0)
        # the public function: strided tokens / offsets, a [B, L, V] view with two leading strides
        big = torch.randn(2, 9, 5008).to(torch.bfloat16)
        tok = torch.randint(0, 5007, (2, 18))[:, ::2]
        rm_stats(big[:, :, 1:], tok, 16, temperature=0.5, seed=3, offset=torch.arange(36).view(2, 18)[:, ::2],
                 check=False, impl="triton")
        rm_stats(big[:, 1:], tok[:, 1:], 16, check=False, impl="triton")

    def loss():
        for dt, V in ((torch.bfloat16, 5008), (torch.float32, 5000)):
            z = torch.randn(4, V).to(dt)
            y = torch.randint(0, V, (4,))
            part = torch.tensor([0, 1, 2, -1])
            ce, lse = op.rm_ce_fwd(z, y, part, 0)
            op.rm_ce_bwd(z, y, part, lse, torch.ones(4), 0)
            op.rm_ce_fwd_grad_(z.clone(), y, part, torch.ones(4), 0)
        # one row (L1 == 1), V == 1, a sliced (unaligned, strided) logits view
        for z in (torch.randn(1, 5008).to(torch.bfloat16), torch.randn(3, 1).to(torch.bfloat16),
                  torch.randn(2, 6, 5009).to(torch.bfloat16)[:, ::2, 1:]):
            n = z.shape[:-1]
            y = torch.zeros(n, dtype=torch.long)
            part = torch.zeros(n, dtype=torch.long)
            ce, lse = op.rm_ce_fwd(z, y, part, 0)
            op.rm_ce_bwd(z, y, part, lse, torch.ones(lse.shape), 0)
            if z.is_contiguous():
                op.rm_ce_fwd_grad_(z.clone(), y, part, torch.ones(lse.shape), 0)

    def linear():
        # chunks of 2 rows and a last chunk of one row (L1 == 1), strided labels / part
        h = torch.randn(5, 16).to(torch.bfloat16).requires_grad_()
        w = torch.randn(5008, 16).to(torch.bfloat16).requires_grad_()
        y = torch.randint(0, 5008, (10,))[::2]
        part = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])[::2]
        rm_linear_loss(h, w, y, part, chunk_size=2, check=False, impl="triton").total.backward()

    def linear_stats():
        # rm_linear_stats' launcher with the tuning the GPU would do: the autotuned partial kernel
        # (every config its pruner keeps) for each row tile (N 1/16 -> 16 rows, 32, 64, 200 -> 128),
        # argmax and sampling epilogues, split on/off, bias / suppression, mask ids 0, 1, 16, V-1;
        # bf16 everywhere, fp16 and fp32 on the smallest and largest row tiles; a layout whose D and
        # strides are not multiples of 16 (the single-stage configs); and the fixed-tile path
        V, D = 5008, 96
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
                op.linear_stats_triton(h, W, b if temp else None, sup if temp else None, x, torch.arange(N), V,
                                       mask_id, 1.0, temp, 123, False, split, 0, 0, 0)
        # decoding on a GPU: few rows over hundreds of vocabulary slices (the reduce kernel's widest tile)
        Wbig = torch.randn(126464, D).to(torch.bfloat16)
        for temp in (0.0, 0.7):
            op.linear_stats_triton(torch.randn(2, D).to(torch.bfloat16), Wbig, None, None, torch.zeros(2, dtype=torch.long),
                                   torch.arange(2), 126464, 126463, 1.0, temp, 7, False, 512, 0, 0, 0)
        for N, dt in ((7, torch.bfloat16), (200, torch.bfloat16), (40, torch.float32)):  # D = 99: no divisibility
            h = torch.randn(N, 99).to(dt)
            W2 = torch.randn(V, 99).to(dt)
            op.linear_stats_triton(h, W2, None, None, torch.zeros(N, dtype=torch.long), torch.arange(N), V, 3, 1.0,
                                   0.0, 1, False, 0, 0, 0, 0)
        # the public function's fixed-tile path (tuning override), strided inputs, V - 1 == mask
        h = torch.randn(6, 2 * D).to(torch.bfloat16)[:, ::2]
        W = torch.randn(V, D).to(torch.bfloat16)
        rm_linear_stats(h, W, torch.randint(0, V, (12,))[::2], V - 1, temperature=0.5, seed=1,
                        blocks=(16, 64, 32), check=False, impl="triton")

    return {"rm_stats": stats, "rm_loss": loss, "rm_linear_loss": linear, "linear_stats": linear_stats}


_JOBS: list = []  # (op, fn, args, kwargs, arch, spec); read by forked workers


def _compile_job(i: int) -> dict:
    op, fn, a, kw, arch, spec = _JOBS[i]
    row = compile_launch(fn, a, kw, arch, spec)
    row["op"] = op
    return row


def _report(row: dict) -> dict:
    print(f"{row['op']:<9} {row['kernel']:<26} {row['arch']} warps={row['num_warps']} stages={row['num_stages']} "
          f"{row['dtypes']:<5} {row['constexprs']} D={','.join(row['divisible'])} "
          f"regs={row['registers']} stack={row['stack_bytes']}B", flush=True)
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--arch", type=int, nargs="+", default=[90, 80])
    ap.add_argument("--json")
    ap.add_argument("--jobs", type=int, default=min(8, os.cpu_count() or 1), help="parallel compilations")
    ap.add_argument("--ops", nargs="+", help="only these workloads (default: all)")
    args = ap.parse_args(argv)
    seen = set()
    backends = {arch: make_backend(GPUTarget("cuda", arch, 32)) for arch in args.arch}
    for op, work in workloads().items():
        if args.ops and op not in args.ops:
            continue
        for fn, a, kw in capture_launches(work):
            for arch in args.arch:
                spec = specialise(fn, a, kw, backends[arch])
                if (arch, spec["key"]) not in seen:
                    seen.add((arch, spec["key"]))
                    _JOBS.append((op, fn, a, kw, arch, spec))
    jobs = max(1, min(args.jobs, len(_JOBS)))
    if jobs > 1 and "fork" in multiprocessing.get_all_start_methods():
        with multiprocessing.get_context("fork").Pool(jobs) as pool:
            results = pool.imap(_compile_job, range(len(_JOBS)))
            rows = [_report(r) for r in results]
    else:
        rows = [_report(_compile_job(i)) for i in range(len(_JOBS))]
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    print(f"compiled {len(rows)} kernel variants for sm_{', sm_'.join(map(str, args.arch))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
