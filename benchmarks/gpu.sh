#!/usr/bin/env bash
# The one script to run on a CUDA machine (torch + triton already installed, no network):
# builds the extension with its CUDA kernels, runs the CUDA tests, then every GPU benchmark.
#   bash benchmarks/gpu.sh OUTDIR
# Writes OUTDIR/gpu_results.md and .json (all benchmark tables), gpu_tests.log and build.log.
# Sized to finish in under 8 minutes on an H200.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:?usage: benchmarks/gpu.sh OUTDIR}
mkdir -p "$OUT"
PARTS=$(mktemp -d)
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0} MAX_JOBS=${MAX_JOBS:-16}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/build.log" 2>&1
echo "== build" | tee -a "$OUT/build.log"
time python3 setup.py build_ext --inplace >> "$OUT/build.log" 2>&1 || echo "BUILD FAILED" | tee -a "$OUT/build.log"
python3 -c "import rmkernels._C as c; print('extension with CUDA:', c.with_cuda())" 2>&1 | tee -a "$OUT/build.log"

echo "== CUDA tests"
timeout 200 python3 -m pytest -q -m cuda -p no:cacheprovider tests/ > "$OUT/gpu_tests.log" 2>&1
echo "pytest exit $?" | tee -a "$OUT/gpu_tests.log"; tail -3 "$OUT/gpu_tests.log"

status=0
for bench in gpu_rm_stats gpu_history_embed gpu_rm_loss gpu_decode gpu_cache; do
  echo "== $bench"
  timeout 150 python3 "benchmarks/$bench.py" --out "$PARTS" > "$PARTS/$bench.log" 2>&1 || { status=1; echo "$bench FAILED"; tail -20 "$PARTS/$bench.log"; }
done

python3 - "$PARTS" "$OUT" <<'PY'
import glob, json, os, sys
parts, out = sys.argv[1], sys.argv[2]
md = [open(f).read() for f in sorted(glob.glob(os.path.join(parts, "*.md")))]
logs = {os.path.basename(f): open(f).read()[-4000:] for f in sorted(glob.glob(os.path.join(parts, "*.log")))}
data = {os.path.basename(f)[:-5]: json.load(open(f)) for f in sorted(glob.glob(os.path.join(parts, "*.json")))}
open(os.path.join(out, "gpu_results.md"), "w").write("\n".join(md))
json.dump({"results": data, "log_tails": logs}, open(os.path.join(out, "gpu_results.json"), "w"), indent=1)
print("\n".join(md))
PY
exit $status
