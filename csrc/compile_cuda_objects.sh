#!/usr/bin/env bash
# Compile every .cu under csrc/ to an object file with nvcc (sm_90 and sm_80), without linking.
# Used by CI on machines with no GPU: proves the CUDA sources build against torch's headers.
set -euo pipefail
cd "$(dirname "$0")"
shopt -s globstar nullglob
files=(**/*.cu)
if [ ${#files[@]} -eq 0 ]; then echo "no .cu files"; exit 0; fi
if ! command -v nvcc >/dev/null; then echo "nvcc not found: cannot compile ${files[*]}" >&2; exit 1; fi
PY=${PYTHON:-python3}
inc=$($PY -c "import torch.utils.cpp_extension as c; print(' '.join('-I'+p for p in c.include_paths()))")
pyinc=$($PY -c "import sysconfig; print(sysconfig.get_paths()['include'])")
out=$(mktemp -d)
for f in "${files[@]}"; do
  echo "nvcc -c $f"
  nvcc -c "$f" -o "$out/$(basename "$f").o" -std=c++20 -O3 \
    -gencode arch=compute_90,code=sm_90 -gencode arch=compute_80,code=sm_80 \
    -I. $inc -I"$pyinc" -DRMK_WITH_CUDA=1 -DTORCH_EXTENSION_NAME=_C \
    --expt-relaxed-constexpr -Xcompiler -fPIC
done
rm -rf "$out"
echo "compiled ${#files[@]} CUDA file(s)"
