#!/usr/bin/env bash
# The GPU checks and benchmarks in one run, for a CUDA machine whose python3 already has torch,
# lightning, torchmetrics and scipy (no install step: such machines are often offline).
#
#   [GPU_STEPS="tests train_step ..."] bash benchmarks/run_on_gpu.sh OUT_DIR [TRAIN_SECONDS] [TOTAL_SECONDS]
#
# The issue-21 training-step sweep (each step has a time limit; train_step.py writes its section
# after every configuration it times, so a step cut short keeps what it measured and says what it
# did not). First the batches of the issue's targets (64 and 256), about 8 minutes; then, if the
# device time allows, the rest (128 and 512), about 7 minutes:
#
#   GPU_STEPS="train_step" bash benchmarks/run_on_gpu.sh "$OUT"        # both spaces, batch 64 and 256
#   GPU_STEPS="train_step_more" bash benchmarks/run_on_gpu.sh "$OUT"   # both spaces, batch 128 and 512
#
# Writes OUT_DIR/RESULTS.md (benchmarks/RESULTS.md with the GPU sections added or replaced; splice
# those into benchmarks/RESULTS.md) and OUT_DIR/gpu.log. GPU_STEPS picks the steps (default all:
# env tests train_step latency estimator). Every step has its own time limit and a failed step does
# not stop the later ones; the estimator benchmark comes last, gets its training epochs from a
# measured step time, so that its training takes about TRAIN_SECONDS (default 150), and whatever is
# left of TOTAL_SECONDS (default 540) as its limit.
set -u
out=${1:?usage: run_on_gpu.sh OUT_DIR [TRAIN_SECONDS] [TOTAL_SECONDS]}
train_seconds=${2:-150}
total_seconds=${3:-540}
steps=" ${GPU_STEPS:-env tests train_step latency estimator} "
mkdir -p "$out"
cp benchmarks/RESULTS.md "$out/RESULTS.md"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
py=${PYTHON:-python3}
log="$out/gpu.log"
step() {  # step SECONDS COMMAND...: run with a time limit, log it, keep going on failure
    local limit=$1; shift
    echo "=== $(date -u +%T) $* (limit ${limit} s)" | tee -a "$log"
    timeout "$limit" "$@" 2>&1 | tee -a "$log"
    echo "=== exit ${PIPESTATUS[0]}" | tee -a "$log"
}
wanted() { [[ $steps == *" $1 "* ]]; }

if wanted env; then
    step 30 nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
    step 60 "$py" -c "import torch, lightning, torchmetrics, scipy; print(torch.__version__, torch.version.cuda, lightning.__version__, torchmetrics.__version__, torch.cuda.get_device_name())"
fi
if wanted tests; then
    step 150 "$py" -m pytest -q -p no:cacheprovider tests/test_cuda.py tests/profiling/test_timing.py
    step 150 "$py" -m pytest -q -p no:cacheprovider tests/nn/test_compile.py -k cuda  # compiled == eager on the GPU
fi
# Issue 21: per-example (c) vs heaviest static subnet (d), eager vs torch.compile vs CUDA graph, on
# the tiny preset (32²) and the paper's ImageNet backbone (224²), with operator calls and host reads
# per step; one section of RESULTS.md per space and batch size. (a) and (b) are left out (a/b was
# measured on the GPU before); the compiled pair is timed last (compiled at its first call).
sweep() {  # sweep SECONDS SPACE BATCH...
    local limit=$1 space=$2; shift 2
    for batch in "$@"; do
        step "$limit" "$py" benchmarks/train_step.py --device cuda --space "$space" --batch-size "$batch" --compile --cuda-graph \
            --only c,d,c-graph,d-graph,c-compiled,d-compiled --steps 10 --repeats 2 --warmup 2 --threads 8 --out "$out/RESULTS.md"
    done
}
if wanted train_step; then
    sweep 100 binas 64  # the first compilation fills inductor's caches
    sweep 80 binas 256
    sweep 150 binas-imagenet 64 256
fi
if wanted train_step_more; then
    sweep 80 binas 128 512
    sweep 150 binas-imagenet 128 512
fi
if wanted latency; then
    step 150 "$py" benchmarks/latency_mape.py --device cuda --malloc default --out "$out/RESULTS.md"
fi
wanted estimator || exit 0

# The default space with 4× the CPU section's training images at batch 256, and the epochs that fit
# TRAIN_SECONDS: more supernet training than 2 CPU cores allow (RESULTS.md notes).
recipe=(--device cuda --threads 8 --train 32768 --batch-size 256 --lr 0.2 --held-out 8192 --eval-batch-size 4096)
epochs=$(timeout 120 "$py" - "$train_seconds" <<'PROBE' 2>>"$log"
import sys, time, torch
sys.path.insert(0, "benchmarks")
from estimator_quality import SUPERNETS
from lightning_nas.distillation import inplace_distillation_loss
# Seconds per training step of the recipe above (batch 256, per-example archs, distillation).
supernet = SUPERNETS["mobilenet"][1](32).cuda()
optimizer = torch.optim.SGD(supernet.parameters(), lr=0.1, momentum=0.9)
x, y = torch.randn(256, 3, 32, 32, device="cuda"), torch.randint(0, 32, (256,), device="cuda")
times = []
for i in range(13):
    torch.cuda.synchronize()
    started = time.perf_counter()
    supernet.activate_indices(supernet.space.sample_indices(256, seed=i))
    loss, _ = inplace_distillation_loss(supernet, x, y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    torch.cuda.synchronize()
    times.append(time.perf_counter() - started)
step = sorted(times[3:])[5]
epochs = max(4, min(48, int(float(sys.argv[1]) / (step * 32768 / 256))))
print(f"training step {step * 1e3:.0f} ms -> {epochs} epochs", file=sys.stderr)
print(epochs)
PROBE
)
echo "epochs: ${epochs:-probe failed, using 8}" | tee -a "$log"
step $((total_seconds - SECONDS - 5)) "$py" benchmarks/estimator_quality.py "${recipe[@]}" --epochs "${epochs:-8}" \
    --paper-passes 1,10 --estimators one_pass,one_pass+paired,one_pass+paired+smoothed,paper --calibration-batches 0 \
    --out "$out/RESULTS.md"
