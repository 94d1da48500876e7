#!/usr/bin/env bash
# The whole GPU validation of a lent H100/H200 in ONE command, stages in priority order within a wall budget:
#
#   bash bench/prepare_gpu_data.sh                  # first, here: the git-ignored .gpu/ data folder (38 MB)
#   bash bench/gpu_session.sh [BUDGET_S]            # on the GPU machine (device tool: carry [".gpu"]); default 480
#   bash bench/gpu_session.sh --dry [BUDGET_S]      # the rehearsal on a CPU machine; default 150
#
# Every stage runs under `timeout`, capped by what is left of the budget, and writes its log / JSON / XML into $OUT
# (default ./runs/gpu_session) as it finishes, so a timeout still returns everything done before it;
# $OUT/summary.txt has one line per stage (ok / rc N / timeout / skipped) and the wall seconds; the exit status is
# 1 when a stage failed.
#   1 build     dfkd_fast._C in place with CUDA for sm_90 only (MAX_JOBS=16, TORCH_CUDA_ARCH_LIST=9.0), unless the
#               present one has CUDA; then `dfkd-fast env` (env.log)
#   2 tests     the CUDA-marked tests, then the fused-op test files, -n 8: tests_*.xml (junit) + tests_*.log (-rA)
#   3 sanitize  compute-sanitizer memcheck (and racecheck when csrc/cuda uses shared memory) on a few seconds of the
#               CUDA Binary Concrete tests, when the machine has compute-sanitizer
#   4 bench     GPU sizes: the key cases (-m key; Binary Concrete 64x1024x1024) without torch.compile, a
#               bench/profile_steps.py summary (the fused ops' kernels, the trainer steps), torch.compile of the key
#               cases (at most 120 s), then the other cases; bench_*.json, and table.md from bench/report.py
#   5 cifar     with the time left (at least CIFAR_MIN_S is kept for it): CIFAR-10 ResNet-56 -> ResNet-20 CPSC-DFKD
#               on .gpu/data, accuracy and wall time per epoch: cifar10_resnet56_resnet20.{json,png}
# GPU_DATA=DIR: the data folder of the CIFAR run (default .gpu/data, else ../shared/data).
# --dry: the same stages on this CPU machine, trimmed: the build only if dfkd_fast._C is missing (never replaced
# under running processes), the CUDA-marked tests of two files (they skip) and DRY_TESTS, no sanitizer, the CPU
# benchmarks of SupCon and the conditional BN without compile, and the CIFAR example's --smoke steps.
#
# Afterwards commit $OUT's JSON, XML and logs under bench/results/h200/ with this command line (COMMIT=<hash> in front
# of it is recorded in versions.txt), and regenerate the tables:
#   python bench/report.py bench/results/h200/bench_*.json
# The machine's python3 is used (PYTHON=... to change it); packages it lacks (mlxtend, pytorch-metric-learning) make
# their tests and benchmark cases skip.
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
if [ "${1:-}" = "--dry" ]; then DRY=1; shift; fi
BUDGET=${1:-$([ "$DRY" = 1 ] && echo 150 || echo 480)}
OUT=${OUT:-$PWD/runs/gpu_session}
PY=${PYTHON:-python3}
RESERVE=${RESERVE_S:-10}                                  # kept at the end for the report
CIFAR_MIN=${CIFAR_MIN_S:-$([ "$DRY" = 1 ] && echo 20 || echo 120)}
DRY_TESTS=${DRY_TESTS:-tests/test_bench_report.py}
mkdir -p "$OUT"
: >"$OUT/summary.txt"
START=$SECONDS
FAILED=0
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
# the Triton sources, mapped to dfkd_fast.kernels by an install; a bare copy of the tree needs the link
[ -e dfkd_fast/kernels ] || "$PY" -c 'import dfkd_fast.kernels' 2>/dev/null || ln -s ../kernels dfkd_fast/kernels
left() { echo $((BUDGET - (SECONDS - START))); }
note() { echo "$*" | tee -a "$OUT/summary.txt"; }

# stage NAME CAP_S CMD...: CMD under a timeout of min(CAP_S, budget left - RESERVE), output in $OUT/NAME.log.
# SIGINT first, so that pytest ends its session and writes what it has (JSON, junit XML); SIGKILL 15 s later.
stage() {
  local name=$1 cap=$2 t rc t0 status
  shift 2
  t=$(($(left) - RESERVE))
  ((t > cap)) && t=$cap
  if ((t < 5)); then note "$name: skipped (budget spent)"; return 99; fi
  t0=$SECONDS
  timeout -s INT -k 15 "$t" "$@" >"$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    5) status="no cases selected" ;;
    124 | 130 | 137) status="timeout after ${t} s (partial)" ;;
    *) status="rc $rc"; FAILED=$((FAILED + 1)) ;;
  esac
  note "$name: $status, $((SECONDS - t0)) s"
  tail -n 4 "$OUT/$name.log" | sed 's/^/    /'
  return $rc
}

# ------------------------------------------------------------------------------------------------------- versions
{
  echo "command: bash bench/gpu_session.sh $([ "$DRY" = 1 ] && echo "--dry ")$BUDGET"
  echo "commit: ${COMMIT:-$(git rev-parse HEAD 2>/dev/null || echo unknown)}"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import torch, triton; print("torch", torch.__version__, "cuda", torch.version.cuda, "triton",
triton.__version__, "gpu", torch.cuda.get_device_name() if torch.cuda.is_available() else "none")'
} 2>&1 | tee "$OUT/versions.txt"

# ---------------------------------------------------------------------------------------------------- 1 build
if "$PY" -c 'import dfkd_fast._C as c, sys; sys.exit(0 if c.with_cuda() else 1)' 2>/dev/null; then
  note "build: skipped (dfkd_fast._C with CUDA is present)"
elif [ "$DRY" = 1 ] && "$PY" -c 'import dfkd_fast._C' 2>/dev/null; then
  note "build: skipped (dry: the CPU dfkd_fast._C is present and may be in use)"
elif [ "$DRY" = 1 ]; then
  stage build 300 "$PY" setup.py -q build_ext --inplace
else
  stage build 300 env MAX_JOBS=16 TORCH_CUDA_ARCH_LIST=9.0 FORCE_CUDA=1 "$PY" setup.py build_ext --inplace
fi
stage env 60 "$PY" -m dfkd_fast.cli env

# ---------------------------------------------------------------------------------------------------- 2 tests
PYTEST=("$PY" -m pytest -q -rA -p no:cacheprovider)
if [ "$DRY" = 1 ]; then
  stage tests_cuda 60 "${PYTEST[@]}" tests/test_binary_concrete_fused.py tests/test_supcon_fused.py -m cuda \
    --junitxml="$OUT/tests_cuda.xml"
  stage tests_fused 60 "${PYTEST[@]}" $DRY_TESTS --junitxml="$OUT/tests_fused.xml"
else
  stage tests_cuda 150 "${PYTEST[@]}" -n 8 tests -m cuda --junitxml="$OUT/tests_cuda.xml"
  stage tests_fused 150 "${PYTEST[@]}" -n 8 tests/test_*_fused.py -m "not cuda" --junitxml="$OUT/tests_fused.xml"
fi

# ------------------------------------------------------------------------------------------------- 3 sanitize
SAN_TESTS=(tests/test_binary_concrete_fused.py -m cuda -x -q -p no:cacheprovider
  -k "test_cuda_matches_cpu_kernel or test_cuda_budget_ties")
if [ "$DRY" = 1 ] || ! command -v compute-sanitizer >/dev/null; then
  note "sanitize: skipped ($([ "$DRY" = 1 ] && echo "dry run" || echo "no compute-sanitizer on this machine"))"
else
  # without PyTorch's caching allocator, so that memcheck sees every tensor's own allocation bounds
  stage sanitize_memcheck 60 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool memcheck \
    --error-exitcode 1 --print-limit 20 "$PY" -m pytest "${SAN_TESTS[@]}"
  if grep -qE '__shared__|cub::|BlockReduce|BlockScan' csrc/cuda/*.cu; then
    stage sanitize_racecheck 45 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 compute-sanitizer --tool racecheck \
      --error-exitcode 1 --print-limit 20 "$PY" -m pytest "${SAN_TESTS[@]}"
  else
    note "sanitize_racecheck: skipped (csrc/cuda uses no shared memory)"
  fi
fi

# ---------------------------------------------------------------------------------------------------- 4 bench
if [ "$DRY" = 1 ]; then
  BENCH=(bench/bench_supcon.py bench/bench_cond_norm.py)
else  # pytest keeps this order: the issue's priority, then any other suite
  BENCH=(bench/bench_supcon.py bench/bench_cond_norm.py bench/bench_bn_stats.py bench/bench_binary_concrete.py
    bench/bench_cpsc.py bench/bench_acgkd.py)
  for f in bench/bench_*.py; do [[ " ${BENCH[*]} " == *" $f "* ]] || BENCH+=("$f"); done
fi
BC_KEY="64x1024x1024"  # Binary Concrete's key shape, selected by name (bench_binary_concrete.py has no key marker)
report() {  # the tables of every benchmark JSON so far (none yet: nothing to do)
  local files=("$OUT"/bench_*.json)
  [ -e "${files[0]}" ] || return 0
  "$PY" bench/report.py "${files[@]}" >"$OUT/table.md.tmp" 2>>"$OUT/report.log" &&
    mv "$OUT/table.md.tmp" "$OUT/table.md"
}
bench() {  # bench NAME CAP_S PYTEST-SELECTION...
  local name=$1 cap=$2
  shift 2
  stage "$name" "$cap" "$PY" -m pytest "${BENCH[@]}" -q -p no:cacheprovider --benchmark-json "$OUT/$name.json" "$@"
  report
}
bench bench_key 180 -m key -k "not compile"
[ "$DRY" = 1 ] || bench bench_key_bc 90 -m "not key" -k "$BC_KEY and not compile"
# torch.profiler evidence for the roofline targets: the fused ops at their key sizes, then the trainer steps
if [ "$DRY" = 1 ]; then
  stage profile 30 "$PY" bench/profile_steps.py --only acgkd --steps 1 --rows 10
else
  stage profile 90 "$PY" bench/profile_steps.py --steps 3 --rows 15
fi
[ "$DRY" = 1 ] && EXTRA=(-k "not compile") || EXTRA=(-k "not $BC_KEY or compile")
cap=$(($(left) - CIFAR_MIN - RESERVE))  # what the benchmarks may use before the CIFAR run
((cap > 120)) && cap=120
[ "$DRY" = 1 ] || bench bench_key_compile $cap -m key -k compile
bench bench_rest $(($(left) - CIFAR_MIN - RESERVE)) -m "not key" "${EXTRA[@]}"
[ -s "$OUT/table.md" ] && note "table: $OUT/table.md ($(grep -c '^| ' "$OUT/table.md") rows)"

# ---------------------------------------------------------------------------------------------------- 5 cifar
DATA=${GPU_DATA:-.gpu/data}
[ -f "$DATA/cifar-10-batches-py/test_batch" ] || DATA=../shared/data
if [ "$DRY" = 1 ]; then
  CIFAR=(--smoke --sample_every 0 --ckpt_every 0)
else
  CIFAR=(--epochs 30 --epoch_itrs 20 --batch_size 256 --sample_every 0 --ckpt_every 0)
fi
rm -rf "$OUT/cifar_run"
stage cifar $(($(left) - RESERVE)) "$PY" examples/cifar10_resnet.py --data-root "$DATA" --out "$OUT/cifar_run" \
  "${CIFAR[@]}"
if [ -s "$OUT/cifar_run/metrics.jsonl" ]; then
  "$PY" bench/cifar_curve.py "$OUT/cifar_run/metrics.jsonl" "$OUT/cifar10_resnet56_resnet20" \
    --extra "{\"command\": \"examples/cifar10_resnet.py ${CIFAR[*]}\", \"data\": \"$DATA\"}" 2>&1 |
    tee -a "$OUT/cifar.log"
  find "$OUT/cifar_run" \( -name '*.pt' -o -name '*.pth' \) -delete  # the models stay here; $OUT returns the curve
fi

note "total: $((SECONDS - START)) s of a $BUDGET s budget; $FAILED stage(s) failed"
exit $((FAILED > 0))
