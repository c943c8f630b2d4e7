#!/usr/bin/env bash
# The GPU check: the CUDA paths that the test suite can only skip on a CPU, run in a few
# minutes on one GPU.
#
#   bash benchmarks/gpu_check.sh                           # from a fresh clone, on a GPU machine
#   GPU_CHECK_PYTHON=.venv/bin/python OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Steps, in order, each under `timeout`, each one's output saved as $OUT/STEP.log:
#   install     the project's own install (`make`'s .venv); GPU_CHECK_PYTHON=PATH skips it
#               and uses that interpreter; with no package index in reach (and no .venv yet)
#               it falls back to a `python3` that already has torch
#   gpu-tests   pytest -m gpu -x -q on the files that hold gpu tests, less the two tests
#               that are steps of their own below
#   resume      on CUDA, with dropout: SIGKILL at a random step, resume, weights and optimizer
#               state torch.equal to an uninterrupted run ("32" and "16-mixed")
#   precision   the default digits job in "32", "16-mixed" and "bf16-mixed"; fails when a
#               mixed mode ends more than 2 points of val/acc below "32"
#   benchmark   bf16-mixed with compile=True on the gpu-compute workload: Trainer against a
#               hand-written loop, fresh processes, interleaved; fails above a paired median
#               per-step ratio of 1.02
#   sync-debug  no host synchronisation between log steps under
#               torch.cuda.set_sync_debug_mode("error") ("32" and "bf16-mixed")
# Each step prints PASS, FAIL or SKIP with its time; the script ends with a summary table
# (also $OUT/summary.txt) and exits 1 when a step failed. Without CUDA every step after the
# install prints SKIP and the script exits 0.
#
# Environment: OUT (the folder for the logs) [gpu_check_out/ in the repository, ignored by
# git]; GPU_CHECK_PYTHON (an interpreter with torch and pytest: skip the install);
# GPU_CHECK_BUDGET (seconds for the whole script; a step gets at most what is left) [540];
# GPU_CHECK_ROUNDS (benchmark rounds per variant) [3].
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/gpu_check_out}"
BUDGET="${GPU_CHECK_BUDGET:-540}"
ROUNDS="${GPU_CHECK_ROUNDS:-3}"
DEADLINE=$((SECONDS + BUDGET))
mkdir -p "$OUT"
# This checkout's trainer, whichever interpreter runs it (the fallback has no install of it).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

STEP_NAMES=()
STEP_STATUSES=()
STEP_SECONDS=()
STEP_NOTES=()

record() {  # NAME STATUS SECONDS NOTE
    STEP_NAMES+=("$1")
    STEP_STATUSES+=("$2")
    STEP_SECONDS+=("$3")
    STEP_NOTES+=("$4")
    printf '%-4s  %-11s %4ss  %s\n' "$2" "$1" "$3" "$4"
}

last_line() {  # the last non-empty line of a log, shortened for the table
    local line
    line="$(grep -v '^[[:space:]]*$' "$1" | tail -n 1 || true)"
    printf '%s' "${line:0:90}"
}

run_step() {  # NAME LIMIT_SECONDS COMMAND...: run it under timeout, log it, record it
    local name=$1 limit=$2
    shift 2
    local log="$OUT/$name.log" left=$((DEADLINE - SECONDS)) start=$SECONDS rc=0
    if ((left < 15)); then
        record "$name" FAIL 0 "not run: the ${BUDGET}s budget (GPU_CHECK_BUDGET) is spent"
        return 0
    fi
    if ((limit > left)); then
        limit=$left
    fi
    echo "---- $name (at most ${limit}s): $*"
    printf '$ %s\n' "$*" >"$log"
    timeout --kill-after=10 "$limit" "$@" >>"$log" 2>&1 || rc=$?
    local took=$((SECONDS - start))
    if ((rc == 0)); then
        record "$name" PASS "$took" "$(last_line "$log")"
    elif ((rc == 124 || rc == 137)); then
        record "$name" FAIL "$took" "timed out after ${limit}s; see $log"
    else
        tail -n 30 "$log" | sed 's/^/    | /'
        record "$name" FAIL "$took" "exit $rc: $(last_line "$log")"
    fi
}

can_reach_package_index() {  # asks pip itself, so a configured mirror or proxy counts
    if ! python3 -m pip --version >/dev/null 2>&1; then
        return 0  # no pip to ask; let make's venv (which brings its own pip) find out
    fi
    timeout 40 python3 -m pip index versions pip --retries 0 --timeout 10 >/dev/null 2>&1
}

install() {  # sets PY, the interpreter every later step runs
    if [[ -n "${GPU_CHECK_PYTHON:-}" ]]; then
        PY="$GPU_CHECK_PYTHON"
        record install SKIP 0 "GPU_CHECK_PYTHON=$PY"
        return 0
    fi
    PY="$ROOT/.venv/bin/python"
    if make -q .venv/.installed 2>/dev/null || can_reach_package_index; then
        run_step install 300 make .venv/.installed
        return 0
    fi
    # A GPU machine may have PyTorch preinstalled and no package index to install from.
    if python3 -c "import torch, pytest" 2>/dev/null; then
        PY="$(command -v python3)"
        record install SKIP 0 "no package index in reach: using $PY, which has torch and pytest"
    else
        PY=""
        record install FAIL 0 "no package index in reach, and python3 lacks torch or pytest"
    fi
}

summary() {  # ENVIRONMENT: print the table, save it, and return 1 when a step failed
    local environment=$1 failed=0 index
    for index in "${!STEP_STATUSES[@]}"; do
        if [[ "${STEP_STATUSES[$index]}" == FAIL ]]; then
            failed=$((failed + 1))
        fi
    done
    {
        echo
        echo "==== GPU check summary: $environment"
        printf '%-11s %-6s %7s  %s\n' step status seconds note
        for index in "${!STEP_NAMES[@]}"; do
            printf '%-11s %-6s %7s  %s\n' "${STEP_NAMES[$index]}" "${STEP_STATUSES[$index]}" \
                "${STEP_SECONDS[$index]}" "${STEP_NOTES[$index]}"
        done
        echo "total: ${SECONDS}s, $failed step(s) failed; logs in $OUT"
    } | tee "$OUT/summary.txt"
    ((failed == 0))
}

CUDA_STEPS=(gpu-tests resume precision benchmark sync-debug)
RESUME_TEST="tests/test_resume.py::test_sigkill_on_cuda_then_resume_gives_identical_weights"
SYNC_TEST="tests/test_logging.py::test_on_cuda_a_step_that_is_not_a_log_step_never_synchronises"

install
if [[ -z "$PY" ]] || [[ "${STEP_STATUSES[0]}" == FAIL ]]; then
    for name in "${CUDA_STEPS[@]}"; do
        record "$name" SKIP 0 "not run: the install failed"
    done
    summary "no interpreter"
    exit 1
fi

cuda=0  # one interpreter start: the environment line, and exit 3 when there is no CUDA
environment="$("$PY" -c "
import platform, sys, torch
available = torch.cuda.is_available()
gpu = torch.cuda.get_device_name() if available else 'no CUDA device'
print(f'python {platform.python_version()}, torch {torch.__version__}, {gpu}')
sys.exit(0 if available else 3)
" 2>&1)" || cuda=$?
environment="$(tail -n 1 <<<"$environment")"
echo "environment: $environment"
if ((cuda == 3)); then
    for name in "${CUDA_STEPS[@]}"; do
        record "$name" SKIP 0 "no CUDA device: torch.cuda.is_available() is False"
    done
    summary "$environment"
    exit 0
elif ((cuda != 0)); then
    for name in "${CUDA_STEPS[@]}"; do
        record "$name" FAIL 0 "not run: $PY cannot import torch"
    done
    summary "$environment"
    exit 1
fi

PYTEST=("$PY" -m pytest -x -q -p no:cacheprovider)
# Only the files that hold gpu tests are collected: others may import what the fallback
# interpreter lacks (OmegaConf, for the config tests), and collecting them costs time.
mapfile -t GPU_TEST_FILES < <(grep -rl --include='*.py' 'pytest.mark.gpu' tests | sort)
run_step gpu-tests 180 "${PYTEST[@]}" -m gpu --deselect "$RESUME_TEST" --deselect "$SYNC_TEST" \
    "${GPU_TEST_FILES[@]}"
run_step resume 120 "${PYTEST[@]}" "$RESUME_TEST"
run_step precision 90 "$PY" benchmarks/digits_precision.py --device cuda --max-drop 0.02
run_step benchmark 210 "$PY" benchmarks/bench_loop.py --workload gpu-compute --device cuda \
    --precision bf16-mixed --compile --variants hand-written,trainer-bare --warmup-epochs 1 \
    --rounds "$ROUNDS" --skip-imports --fail-above 1.02
run_step sync-debug 60 "${PYTEST[@]}" "$SYNC_TEST"
summary "$environment"
