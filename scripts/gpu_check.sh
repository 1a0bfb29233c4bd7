#!/usr/bin/env bash
# GPU check of minilora on the CuPy backend. Installs nothing: it needs a machine where cupy is already
# importable (pip install -e ".[gpu]" beforehand) and a CUDA GPU answers.
#
#   scripts/gpu_check.sh                 # from the repository root
#   PYTHON=python3 scripts/gpu_check.sh  # another interpreter (default: .venv/bin/python if present)
#
# Stages (each prints its numbers; a failing stage does not stop the later ones):
#   1. the test suite's cupy cases: the xp fixture adds cupy to every compute test when a GPU answers,
#      and -k cupy selects those (tests/reference excluded: it needs torch)
#   2. minilora verify --backend cupy, float32 and float64, with a JSON report each
#   3. bench/bench_step.py with MINILORA_BACKEND=cupy (the bench has no --backend flag: the model follows
#      the environment variable; its "fraction of peak" compares with NumPy's CPU GEMM rate, so read only
#      its step times there), and a synchronized step timing of the same model on the GPU
#   4. data-parallel gradient reduction on the GPU: python -m minilora.distributed.selfcheck --backend cupy
#      under mpiexec (mpi4py and mpich come with the test extra), float64, against one process:
#      4a through NCCL (cupy.cuda.nccl) with one rank per GPU (a single rank on a one-GPU machine),
#      4b through MPI handed device buffers (MINILORA_GPU_REDUCTION=mpi), 2 ranks: passes only
#      where the MPI library is built with CUDA support (the pip mpich wheel may not be)
# Results go to $OUT (set by some runners) or ./gpu-check-results. Exit status: the number of failed stages.
set -u -o pipefail  # a pipeline fails when pytest does, not only when tee does
cd "$(dirname "$0")/.."

if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS="${OUT:-gpu-check-results}"
mkdir -p "$RESULTS"
EXAMPLES="${EXAMPLES:-10}"
LAYERS="${LAYERS:-30}"
failed=0

echo "== machine"
date -u +"%Y-%m-%dT%H:%M:%SZ"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$PYTHON" - <<'PY' || { echo "cupy is not usable here: nothing to check (this script installs nothing)"; exit 100; }
import cupy, numpy
print(f"python ok; numpy {numpy.__version__}; cupy {cupy.__version__}; GPU available: {cupy.is_available()}")
if not cupy.is_available():
    raise SystemExit(1)
props = cupy.cuda.runtime.getDeviceProperties(0)
print(f"device 0: {props['name'].decode()}, {props['totalGlobalMem'] / 2**30:.1f} GiB")
PY

echo
echo "== 1. test suite on cupy (the xp fixture's cupy cases)"
if HYPOTHESIS_PROFILE="${HYPOTHESIS_PROFILE:-ci}" \
        "$PYTHON" -m pytest -q tests --ignore=tests/reference -k cupy -p no:cacheprovider --durations=10 \
        --junitxml="$RESULTS/pytest_cupy.xml" 2>&1 | tee "$RESULTS/pytest_cupy.txt"; then
    echo "stage 1: PASS"
else
    echo "stage 1: FAIL (see $RESULTS/pytest_cupy.txt)"; failed=$((failed + 1))
fi

echo
echo "== 2. minilora verify --backend cupy"
for dtype in float32 float64; do
    if "$PYTHON" -m minilora verify --backend cupy --dtype "$dtype" --examples "$EXAMPLES" \
            --json "$RESULTS/verify_cupy_$dtype.json"; then
        echo "stage 2 ($dtype): PASS"
    else
        echo "stage 2 ($dtype): FAIL"; failed=$((failed + 1))
    fi
done

echo
echo "== 3a. bench/bench_step.py with MINILORA_BACKEND=cupy ($LAYERS layers)"
if MINILORA_BACKEND=cupy "$PYTHON" bench/bench_step.py --layers "$LAYERS" --steps 5 \
        --json "$RESULTS/bench_step_cupy.json"; then
    echo "stage 3a: done"
else
    echo "stage 3a: FAIL"; failed=$((failed + 1))
fi

echo
echo "== 3b. synchronized training-step time on the GPU (SmolLM2-135M shape, q/v trainable, batch 4 x 128)"
if LAYERS="$LAYERS" RESULTS="$RESULTS" "$PYTHON" - <<'PY'
import json, os, statistics, time
import cupy
import numpy as np
from minilora import backend
from minilora.models import SMOLLM2_135M, ModelConfig, Transformer, lm_loss

layers = int(os.environ["LAYERS"])
with backend.use_backend("cupy"):
    cfg = ModelConfig(**{**SMOLLM2_135M, "num_hidden_layers": layers})
    model = Transformer(cfg, dtype="float32", seed=0)
    model.freeze()
    for layer in model.model.layers:
        layer.self_attn.q_proj.weight.requires_grad = True
        layer.self_attn.v_proj.weight.requires_grad = True
    tokens = np.random.default_rng(1).integers(0, cfg.vocab_size, (4, 129))
    ids, targets = cupy.asarray(tokens[:, :-1]), cupy.asarray(tokens[:, 1:])
    times = []
    for i in range(6):
        model.zero_grad()
        cupy.cuda.Device().synchronize()
        t0 = time.perf_counter()
        loss = lm_loss(model, ids, targets)
        loss.backward()
        cupy.cuda.Device().synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    peak = cupy.get_default_memory_pool().total_bytes() / 2**30
    result = dict(layers=layers, median_step_s=statistics.median(times), steps_s=times,
                  loss=float(loss.item()), gpu_pool_gib=peak)
print(json.dumps(result, indent=1))
with open(os.path.join(os.environ["RESULTS"], "gpu_step.json"), "w") as f:
    json.dump(result, f, indent=1)
PY
then
    echo "stage 3b: done"
else
    echo "stage 3b: FAIL"; failed=$((failed + 1))
fi

echo
echo "== 4. data-parallel reduction on the GPU (minilora.distributed.selfcheck --backend cupy)"
MPIEXEC="$(dirname "$PYTHON")/mpiexec"
[ -x "$MPIEXEC" ] || MPIEXEC="$(command -v mpiexec || true)"
if [ -z "$MPIEXEC" ] || ! "$PYTHON" -c "import mpi4py" 2>/dev/null; then
    echo "stage 4: SKIPPED (mpiexec or mpi4py missing: pip install -e '.[distributed]')"
else
    NGPU=$("$PYTHON" -c "import cupy; print(cupy.cuda.runtime.getDeviceCount())")
    RANKS=$(( NGPU >= 2 ? 2 : 1 ))
    for reduction in nccl mpi; do
        [ "$reduction" = mpi ] && RANKS=2
        if MINILORA_GPU_REDUCTION=$reduction OPENBLAS_NUM_THREADS=1 timeout 600 "$MPIEXEC" -n "$RANKS" \
                "$PYTHON" -m minilora.distributed.selfcheck --backend cupy --steps 4 --batch-size 6 \
                --json "$RESULTS/selfcheck_cupy_$reduction.json" 2>&1 | tee "$RESULTS/selfcheck_cupy_$reduction.txt"; then
            echo "stage 4 ($reduction, $RANKS rank(s) on $NGPU GPU(s)): PASS"
        else
            echo "stage 4 ($reduction, $RANKS rank(s) on $NGPU GPU(s)): FAIL"; failed=$((failed + 1))
        fi
    done
fi

echo
echo "== gpu_check: $failed failed stage(s); results in $RESULTS"
ls -l "$RESULTS"
exit "$failed"
