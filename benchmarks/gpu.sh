#!/usr/bin/env bash
# The one script to run on a lent CUDA machine (torch + triton installed, no network), unattended:
#
#   bash benchmarks/gpu.sh [--dry-run] [--deadline S] [--only a,b,c] [--no-build] [OUTDIR]
#
# OUTDIR defaults to $OUT. The deadline (seconds from the start, default 540, or $GPU_DEADLINE_S)
# covers everything: a section whose estimate no longer fits is skipped and the skip is recorded; a
# section running past min(its cap, the deadline) is interrupted and keeps what it already wrote.
# --only runs just the named sections (benchmark names with or without "gpu_", or "tests"); the
# build always runs (every lent machine is fresh). --dry-run: the same driver on CPU with tiny shapes
# (Triton in the interpreter, no compile, CUDA tests collected and skipped); CI runs it
# (tests/test_gpu_script.py).
#
# Sections, in order: build (setup.py build_ext --inplace with the host's torch, never reinstalling
# it; TORCH_CUDA_ARCH_LIST=9.0 and MAX_JOBS=<cores> unless set; then the import check
# benchmarks/gpu_build_check.py: `import torch, rmkernels`, extension_available("cuda"), the
# registered torch.ops.rmkernels kernels), tests (pytest -m cuda -v, --junitxml, --durations=15),
# then every GPU benchmark below in priority order.
#
# OUTDIR gets six files, written as each section finishes (a kill loses at most the running
# section): gpu_results.md / gpu_results.json (everything so far, re-merged after every section),
# gpu.log (timestamped phases and each script's output), build.log, pytest.log, pytest_junit.xml.
#
# CONTRACT for a benchmark script (add yours to SECTIONS below, in priority order):
#   * benchmarks/gpu_<name>.py --out DIR [--dry-run]; import benchmarks/_gpu_common.py first (with
#     --dry-run it sets TRITON_INTERPRET=1 before rmkernels loads) and use parse_args().
#   * write only through _gpu_common.Results(DIR, table, meta, columns).add(row): DIR/<table>.json
#     and .md are rewritten after every row, so a script interrupted at its limit keeps its rows.
#     Several tables per script are fine; write nothing else into DIR.
#   * meta = device_info() (device, torch / Triton / CUDA versions, date) + dtype, shape,
#     copy_GBps (copy_bandwidth_gbs(), measured in the same run) and the timing method; rows carry
#     GB/s and % of that copy bandwidth for memory-bound kernels and the speed-up over the eager
#     reference measured in the same run, like with like (both eager or both CUDA-graph replays;
#     bench_ms(flush=True) flushes the L2 before each timed call).
#   * exit 0 when every correctness check passed, 1 otherwise; no downloads, no files outside DIR.
#   * --dry-run: tiny shapes on CPU, a few seconds (the whole dry run must stay under a minute).
#   * give an honest estimate (seconds on an H200 including Triton compiles) and a cap below.
set -uo pipefail
cd "$(dirname "$0")/.."

# name               estimate_s  cap_s   (seconds on an H200, Triton compiles included)
SECTIONS="
build                90          240
tests                110         200
gpu_rm_stats         45          120
gpu_history_embed    40          120
gpu_rm_loss          60          150
gpu_decode           60          150
gpu_cache            90          150
gpu_linear_stats     60          120
"

exec python3 benchmarks/_gpu_driver.py --sections "$SECTIONS" --argv-text "$*" "$@"
