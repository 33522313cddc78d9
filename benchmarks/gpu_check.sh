#!/usr/bin/env bash
# The CUDA check: on a machine with CUDA, run the CUDA tests (tests/test_cuda.py: every op, windows
# and optimizers on CUDA tensors at 1, 2 and 4 ranks) and a short NCCL vs host-staging timing table
# (benchmarks/bench_cuda.py), then print one summary line.  Needs no install: it runs this checkout
# (PYTHONPATH) with the python, torch, mpi4py and mpirun found on the machine.  About 3 minutes.
#
#   bash benchmarks/gpu_check.sh [LOG_DIR]      # logs go to LOG_DIR (default /tmp/bluefog-gpu-check)
#   GPU_CHECK_CPU_TESTS=1 bash benchmarks/gpu_check.sh    # also the CPU op and window tests
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
LOG_DIR=${1:-/tmp/bluefog-gpu-check}
mkdir -p "$LOG_DIR"
PY=$("${PYTHON:-python3}" -c "import sys; print(sys.executable)")

$PY - <<'EOF' || { echo "gpu_check: FAILED (no CUDA device)"; exit 2; }
import shutil, torch, mpi4py
from mpi4py import MPI
assert torch.cuda.is_available(), "no CUDA device"
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, NCCL "
      f"{'.'.join(map(str, torch.cuda.nccl.version()))}, {torch.cuda.device_count()} x "
      f"{torch.cuda.get_device_name(0)}; mpi4py {mpi4py.__version__} on "
      f"{MPI.Get_library_version().splitlines()[0]}; mpirun {shutil.which('mpirun')}")
EOF

start=$(date +%s)
$PY -m pytest tests/test_cuda.py -q -p no:cacheprovider -rfs 2>&1 | tee "$LOG_DIR/tests.log"
tests_rc=${PIPESTATUS[0]}
test_line=$(grep -E "[0-9]+ (passed|failed|skipped)|no tests ran" "$LOG_DIR/tests.log" | tail -1)
echo "CUDA tests took $(( $(date +%s) - start )) s"

bench() {   # bench NAME NP [ENV=VALUE]
    local name=$1 np=$2
    shift 2
    env "$@" $PY -m bluefog.run.run -np "$np" $PY benchmarks/bench_cuda.py --repeats 10 \
        --json "$LOG_DIR/bench_$name.json" 2>&1 | tee "$LOG_DIR/bench_$name.txt"
}
bench nccl_np1 1
bench staged_np1 1 BLUEFOG_OPS_ON_CPU=1
bench staged_np2 2
gpus=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$gpus" -ge 2 ]; then bench nccl_np$gpus "$gpus"; fi

if [ "${GPU_CHECK_CPU_TESTS:-0}" = 1 ]; then    # this machine's MPI with the CPU op tests
    $PY -m pytest tests/test_ops.py tests/test_win.py -q -p no:cacheprovider -rf 2>&1 \
        | tee "$LOG_DIR/cpu_tests.log" | tail -5
    [ "${PIPESTATUS[0]}" = 0 ] || tests_rc=1
    test_line="$test_line; CPU: $(grep -E "[0-9]+ (passed|failed)" "$LOG_DIR/cpu_tests.log" | tail -1)"
fi

summary=$($PY - "$LOG_DIR" <<'EOF'
import glob, json, os, sys
parts = []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "bench_*.json"))):
    rows = {row["elements"]: row for row in json.load(open(path))}
    big = rows.get(max(rows))
    name = os.path.basename(path)[6:-5]
    parts.append(f"{name} allreduce {big['allreduce_ms']:.2f} ms / neighbor_allreduce "
                 f"{big['neighbor_allreduce_ms']:.2f} ms at {big['elements'] >> 20}M floats")
print("; ".join(parts) if parts else "no timings")
EOF
)
status=$([ "$tests_rc" = 0 ] && echo passed || echo FAILED)
echo "gpu_check: $status ($test_line); $summary"
exit "$tests_rc"
