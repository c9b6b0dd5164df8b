"""Every Triton kernel compiles for real GPUs (sm_90, sm_80) without one, with no register spills.

The interpreter accepts programs the compiler rejects (types, layouts), so this runs the compiler
itself, ahead of time, in a subprocess without TRITON_INTERPRET (tools/triton_aot.py), with the
specialisations Triton's JIT picks at run time: an int argument equal to 1 becomes a constexpr
(``mask_id == 1`` with sampling failed to compile on a GPU that way, issue 16), ints divisible by
16 and aligned pointers get a divisibility attribute.
"""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_triton_kernels_compile_for_sm90_and_sm80(tmp_path):
    out = tmp_path / "aot.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "triton_aot.py"), "--arch", "90", "80",
                          "--json", str(out)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = json.loads(out.read_text())
    kernels = {r["kernel"] for r in rows}
    assert {"_rm_stats_fused_kernel", "_rm_stats_partial_kernel", "_rm_stats_reduce_kernel",
            "_rm_ce_fwd_kernel", "_rm_ce_bwd_kernel", "_lstats_partial_kernel", "_lstats_reduce_kernel"} <= kernels
    # rm_linear_stats: every autotuning config its pruner keeps, for each row tile and epilogue kind
    tuned = {(r["constexprs"]["BLOCK_N"], r["constexprs"]["SAMPLE"], r["dtypes"]) for r in rows
             if r["kernel"] == "_lstats_partial_kernel"}
    assert {(bn, s) for bn, s, _ in tuned} >= {(bn, s) for bn in (16, 32, 64, 128) for s in (False, True)}
    assert {d for _, _, d in tuned} >= {"*bf16/*fp32", "*fp16/*fp32", "*fp32"}
    assert {r["arch"] for r in rows} == {"sm_90", "sm_80"}
    # the JIT's specialisations were compiled: one row (L1 == 1) and V == 1 turn into constexprs,
    # vocabularies divisible by 16 get the divisibility attribute, ...
    fused = [r for r in rows if r["kernel"] == "_rm_stats_fused_kernel"]
    assert any(r["constexprs"].get("L1") == 1 for r in fused)
    assert any(r["constexprs"].get("V") == 1 for r in fused)
    assert any("V" in r["divisible"] for r in fused) and any("V" not in r["divisible"] for r in fused)
    assert any(r["constexprs"].get("L1") == 1 for r in rows if r["kernel"] == "_rm_ce_fwd_kernel")
    # ... but ids and RNG keys never do (the workloads pass mask_id 0, 1, 16 and V - 1, seed keys 1 and 16)
    for r in rows:
        assert not {"mask_id", "seed_key"} & (set(r["constexprs"]) | set(r["divisible"])), r
    for r in rows:
        assert r["stack_bytes"] == 0, r  # no spills
        if r["kernel"] == "_rm_stats_fused_kernel" and r["arch"] == "sm_90":
            assert r["registers"] <= 96, r  # occupancy budget of the streaming kernel (4 blocks / SM)
