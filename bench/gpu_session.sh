#!/usr/bin/env bash
# GPU validation on a lent H100/H200 (the device tool), in few long calls; each stage fits one 10-minute call.
#
#   bash bench/gpu_session.sh build      # build dfkd_fast._C with its CUDA kernels against the machine's torch
#   bash bench/gpu_session.sh tests      # the whole suite, CUDA-marked tests included
#   bash bench/gpu_session.sh sanitize   # compute-sanitizer memcheck (+ racecheck) on the CUDA op tests
#   bash bench/gpu_session.sh bench      # pytest bench/ at GPU sizes -> $OUT/bench.json and the markdown table
#
# Stages after `build` reuse its in-place build when the call carries `build` and `dfkd_fast/_C*.so`, or rebuild.
# Data: copy what the tests and examples read into the git-ignored .gpu/ (e.g. `mkdir -p .gpu && cp -r
# ../shared/data .gpu/`) and name .gpu in `carry`. Commit $OUT/bench.json under bench/results/<gpu>/ with this
# command line, and regenerate the README table with `python bench/report.py bench/results/<gpu>/*.json`.
set -uo pipefail
stage=${1:?usage: gpu_session.sh build|tests|sanitize|bench}
OUT=${OUT:-$PWD/gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
[ -d .gpu/data ] && export DFKD_FAST_SHARED_DATA=$PWD/.gpu/data
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt"
python3 -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton", triton.__version__)' \
  | tee -a "$OUT/gpu.txt"

build() {
  if ! python3 -c 'import dfkd_fast._C as c, sys; sys.exit(0 if c.with_cuda() else 1)' 2>/dev/null; then
    python3 setup.py -q build_ext --inplace >"$OUT/build.log" 2>&1 || { tail -40 "$OUT/build.log"; exit 1; }
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  python3 -m dfkd_fast.cli env | tee "$OUT/env.txt"
}

case "$stage" in
  build) build ;;
  tests)
    build
    python3 -m pytest tests -q -n 8 -p no:cacheprovider --durations=20 2>&1 | tee "$OUT/tests.log" | tail -40 ;;
  sanitize)
    build
    for tool in memcheck racecheck; do
      compute-sanitizer --tool "$tool" --error-exitcode 1 \
        python3 -m pytest tests/test_binary_concrete_fused.py -m cuda -q -x -p no:cacheprovider \
        >"$OUT/sanitize_$tool.log" 2>&1
      echo "$tool exit $?"; tail -5 "$OUT/sanitize_$tool.log"
    done ;;
  bench)
    build
    python3 -m pytest bench -q -p no:cacheprovider --benchmark-json "$OUT/bench.json" 2>&1 | tail -15
    python3 bench/report.py "$OUT/bench.json" | tee "$OUT/table.md" ;;
  *) echo "unknown stage $stage" >&2; exit 2 ;;
esac
