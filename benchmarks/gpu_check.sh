#!/usr/bin/env bash
# The engine at full size on one CUDA GPU, nothing downloaded, meant to fit one call of under 8
# minutes (not yet run on a GPU in this form: see benchmarks/README.md). SD v1.x's architecture with
# random weights (--model sd-v1-random: 860M-parameter UNet, CLIP ViT-L/14 encoder) at 512 px,
# published settings (30-step attack, 50 DDIM steps, retain batch 5, all encoder layers, the
# built-in retain set). Steps, picked by key with GPU_CHECK_STEPS (default
# "attention step fp32 nchw xformers compile"):
#   attention      the UNet alone, forward and back to the conditioning at batch 1 (attack step) and
#                  6 (defender step), bf16: sdpa against xformers (where it imports), NCHW against
#                  channels_last (benchmarks/bench_attention.py);
#   step           the reference engine for two iterations (the first dropped; also normalised to its
#                  expected work per iteration), then the fast engine end to end with its defaults:
#                  the trajectory bank at its default size built from scratch, GPU_CHECK_WARMUP (20)
#                  warm-up and GPU_CHECK_ATTACKED (150) attacked iterations; s/iter, TFLOP/s per
#                  phase, peak memory, `end_to_end_1000_s` (the published run projected) and
#                  `fast_peak_reserved_mb` (benchmarks/bench_step.py);
#   fp32, nchw, xformers, compile   the fast engine for the same warm-up and 6 attacked iterations
#                  with --no-tf32, --no-channels-last, --attention xformers, --compile (regional;
#                  the first iterations hold the compiling), same seed, reusing the step's bank:
#                  their losses against the step's, and their s/iter;
#   eager, adam8bit, checkpointing, profile   (on request) the same short run with --no-cuda-graphs,
#                  --optim adam8bit, --checkpointing, or under torch.profiler (GPU busy time, top kernels);
#   kernels        (on request) the Triton kernel tests, natively;
#   kernel-bench   (on request) the Triton kernels against their PyTorch references in bf16;
#   attack         (on request) `advunlearn attack` (UnlearnDiffAtk, LMS) on the same architecture at
#                  512 px: 8 prompts in one batch, 3 timestep blocks of 40 steps
#                  (benchmarks/bench_attack.py);
#   torchrun       (on request) the same short run as one process under torchrun (--nproc-per-node 1:
#                  the NCCL process group and the gradient all-reduce of data-parallel training).
# Everything goes to $OUT (default ./gpu-check-out), at most eight files (what the device tool brings
# back): gpu_check.log, summary.txt (the environment first) and one JSON per step run (attention,
# step, fast-fp32, fast-nchw, fast-xformers, fast-compile, fast-eager, fast-adam8bit, fast-checkpointing,
# fast-profile, fast-torchrun, kernels-bench, attack), plus compile-log.jsonl when the compile step ran out of time:
# name at most six JSON-writing steps.
#
#   bash benchmarks/fetch_gpu_wheels.sh      # first, where pip works: diffusers, bitsandbytes, xformers
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # the same steps on a CPU with the tiny model:
#                                                  # checks the script, measures nothing (compile only
#                                                  # when GPU_CHECK_STEPS names it: minutes of inductor)
# GPU_CHECK_BUDGET_S (default 450) bounds the whole run: a step that would start with less than
# 30 s left is skipped, and each step's timeout is cut to what is left.
set -uo pipefail  # no -e: a failed step is reported and the next one still runs
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-check-out}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
budget=${GPU_CHECK_BUDGET_S:-450}
scratch=$(mktemp -d)

# The wheels include advunlearn's own (benchmarks/fetch_gpu_wheels.sh): kernels/ and cli/ import as
# advunlearn_fast.kernels and advunlearn_fast.cli only once installed.
if ls benchmarks/wheels/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$scratch/site" \
        benchmarks/wheels/*.whl || echo "gpu_check: installing benchmarks/wheels failed"
    export PYTHONPATH=$scratch/site:$PYTHONPATH
elif ! python3 -c "import advunlearn_fast.kernels" 2>/dev/null; then
    echo "gpu_check: advunlearn is not installed; run benchmarks/fetch_gpu_wheels.sh first (it builds its wheel)"
    exit 2
fi

warmup=${GPU_CHECK_WARMUP:-20}
attacked=${GPU_CHECK_ATTACKED:-150}
if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    common=(--model tiny --device cpu --attack-steps 2 --ddim-steps 4)
    warmup=2 attacked=2
    attention=(--model tiny --device cpu --repeats 2 --warmup 1)
    kernel_tests=(--collect-only -q)  # the interpreter would take minutes: only check they load
    kernel_bench=(--device cpu --repeats 2 --warmup 1)
    attack=(--model tiny --device cpu --prompts 3 --batch-size 2 --timesteps 2 --steps-per-timestep 2 --gen-steps 3)
else
    common=(--model sd-v1-random --device cuda --image-size 512)
    attention=(--model sd-v1-random --device cuda)
    kernel_tests=(-q)
    kernel_bench=(--device cuda)
    attack=(--model sd-v1-random --device cuda --prompts 8 --batch-size 8 --timesteps 3)
fi
# The bank at its default size (32 trajectories per concept prompt, 2 per retain prompt drawn, the
# built-in retain set), built from scratch by the step and reused by the short runs after it.
common+=(--bank-dir "$scratch/bank" --concept nudity --warmup "$warmup")
short=(--engines fast --iterations $((warmup + 6)))

# The dry run leaves out compile by default: inductor on a CPU compiles for minutes.
default_steps="attention step fp32 nchw xformers compile"
[ "${GPU_CHECK_DRY:-0}" = 1 ] && default_steps="attention step fp32 nchw xformers"
steps=" ${GPU_CHECK_STEPS:-$default_steps} "
known=" attention step fp32 nchw xformers compile eager adam8bit checkpointing profile torchrun kernels kernel-bench attack "
for key in $steps; do
    if [[ $known != *" $key "* ]]; then
        echo "gpu_check: unknown step '$key' in GPU_CHECK_STEPS (steps:$known)"
        exit 2
    fi
done
status=()
step() {  # step KEY NAME CAP_SECONDS COMMAND...: when KEY is in the steps, run with a timeout cut to the budget left
    local key=$1 name=$2 cap=$3 left rc
    shift 3
    [[ $steps == *" $key "* ]] || return 0
    left=$((budget - SECONDS))
    if [ "$left" -lt 30 ]; then
        echo "== $name: skipped, ${left}s of the budget left"
        status+=("$name: skipped (budget)")
        return
    fi
    [ "$cap" -gt "$left" ] && cap=$left
    echo "== $name (timeout ${cap}s, ${SECONDS}s elapsed)"
    timeout "$cap" "$@"
    rc=$?
    status+=("$name: exit $rc after ${SECONDS}s")
}

{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU')"
    python3 -c "import diffusers, transformers; print('diffusers', diffusers.__version__, 'transformers', transformers.__version__)"
    for package in bitsandbytes triton xformers; do
        python3 -c "import $package as p; print('$package', p.__version__)" 2>/dev/null || echo "$package: not importable"
    done
} > "$scratch/env.txt" 2>&1
cat "$scratch/env.txt"

step attention "attention and layout" 90 python3 -m benchmarks.bench_attention "${attention[@]}" --json "$OUT/attention.json"
step step "reference vs fast, end to end" 330 python3 -m benchmarks.bench_step "${common[@]}" \
    --iterations $((warmup + attacked)) --reference-iterations 2 --json "$OUT/step.json"
step fp32 "fast, --no-tf32" 60 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" --no-tf32 \
    --json "$OUT/fast-fp32.json"
step nchw "fast, --no-channels-last" 60 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" \
    --no-channels-last --json "$OUT/fast-nchw.json"
step xformers "fast, --attention xformers" 60 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" \
    --attention xformers --json "$OUT/fast-xformers.json"
step compile "fast, --compile" 240 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" --compile \
    --run-dir "$scratch/compile" --json "$OUT/fast-compile.json"
if [ ! -f "$OUT/fast-compile.json" ] && [ -f "$scratch/compile/fast/log.jsonl" ]; then
    cp "$scratch/compile/fast/log.jsonl" "$OUT/compile-log.jsonl"  # how far compiling got
fi
step eager "fast, eager attack step" 60 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" \
    --no-cuda-graphs --json "$OUT/fast-eager.json"
step adam8bit "fast, 8-bit Adam" 60 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" \
    --optim adam8bit --json "$OUT/fast-adam8bit.json"
step checkpointing "fast, checkpointing" 60 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" \
    --checkpointing --json "$OUT/fast-checkpointing.json"
step profile "fast, profiled" 90 python3 -m benchmarks.bench_step "${common[@]}" "${short[@]}" --profile \
    --json "$OUT/fast-profile.json"
step torchrun "fast, one process under torchrun" 60 python3 -m torch.distributed.run --standalone --nproc-per-node 1 \
    -m benchmarks.bench_step "${common[@]}" "${short[@]}" --json "$OUT/fast-torchrun.json"
step kernels "kernel tests" 150 python3 -m pytest "${kernel_tests[@]}" tests/kernels
step kernel-bench "kernel benchmark" 60 python3 -m benchmarks.bench_kernels --dtype bf16 "${kernel_bench[@]}" \
    --json "$OUT/kernels-bench.json"
step attack "attack (UnlearnDiffAtk)" 300 python3 -m benchmarks.bench_attack "${attack[@]}" --json "$OUT/attack.json"

{
    cat "$scratch/env.txt"
    python3 -m benchmarks.gpu_check_summary "$OUT"
    printf '%s\n' ${status[@]+"${status[@]}"}
} > "$OUT/summary.txt"
echo "== summary (${SECONDS}s)"
cat "$OUT/summary.txt"
rm -rf "$scratch"
