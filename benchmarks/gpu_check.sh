#!/usr/bin/env bash
# The engine at full size on one CUDA GPU, nothing downloaded, in under 8 minutes on an H100.
# Steps, picked by key with GPU_CHECK_STEPS (default "step eager checkpointing adam profile"):
#   step           SD v1.x's architecture with random weights (--model sd-v1-random: 860M-parameter
#                  UNet, CLIP ViT-L/14 encoder) at 512 px, published settings (30-step attack, 50 DDIM
#                  steps, retain batch 5, all encoder layers): the reference engine for two iterations
#                  and the fast engine for four (the first of each dropped as warm-up), s/iter and peak
#                  GPU memory of both (benchmarks/bench_step.py);
#   eager          the fast engine with its attack step run eagerly (--no-cuda-graphs): what the CUDA
#                  graphs gain, and how far the same seed's losses move without them;
#   adam, checkpointing   the fast engine with --optim adam, and with --checkpointing, for the memory
#                  table of README.md (the other runs use the default, 8-bit Adam with bitsandbytes);
#   profile        the fast engine under torch.profiler: how much of an iteration the GPU is busy;
#   kernels        (on request) the Triton kernel tests, natively;
#   kernel-bench   (on request) the Triton kernels against their PyTorch references in bf16;
#   compile        (on request) the fast engine under --compile (inductor; its first iteration,
#                  dropped, holds the compilation), whose per-iteration log is copied to
#                  compile-log.jsonl even when the step runs out of time;
#   attack         (on request) `advunlearn attack` (UnlearnDiffAtk, LMS) on the same architecture at
#                  512 px: 8 prompts in one batch, 3 timestep blocks of 40 steps, the attack step as a
#                  CUDA graph; seconds per prompt per block and per judged generation, peak memory,
#                  and the projection to the 142 I2P nudity prompts (benchmarks/bench_attack.py).
# Everything goes to $OUT (default ./gpu-check-out), at most eight files (what the device tool brings
# back): gpu_check.log (with the kernel tests' output), env.txt, summary.txt and one JSON per step run
# (step.json, fast-eager.json, fast-adam.json, fast-checkpointing.json, kernels-bench.json,
# fast-profile.json, fast-compile.json, compile-log.jsonl and attack.json): name at most five
# JSON-writing steps.
#
#   bash benchmarks/fetch_gpu_wheels.sh      # first, where pip works: diffusers, bitsandbytes wheels
#   bash benchmarks/gpu_check.sh             # on the GPU machine
#   GPU_CHECK_DRY=1 bash benchmarks/gpu_check.sh   # the same steps on a CPU with the tiny model:
#                                                  # checks the script, measures nothing
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

if [ "${GPU_CHECK_DRY:-0}" = 1 ]; then
    common=(--model tiny --device cpu --attack-steps 2 --ddim-steps 4 --bank-size 2 --retain-bank-size 1)
    fast_iterations=2
    kernel_tests=(--collect-only -q)  # the interpreter would take minutes: only check they load
    kernel_bench=(--device cpu --repeats 2 --warmup 1)
    attack=(--model tiny --device cpu --prompts 3 --batch-size 2 --timesteps 2 --steps-per-timestep 2 --gen-steps 3)
else
    common=(--model sd-v1-random --device cuda --image-size 512 --bank-size 4 --retain-bank-size 1)
    fast_iterations=4
    kernel_tests=(-q)
    kernel_bench=(--device cuda)
    attack=(--model sd-v1-random --device cuda --prompts 8 --batch-size 8 --timesteps 3)
fi
# A short retain set keeps the one-off bank build to seconds; it does not change an iteration's cost.
printf 'a photo of a %s\n' chair bicycle clock cup book boat bench kite > "$scratch/retain.txt"
common+=(--retain-prompts "$scratch/retain.txt" --bank-dir "$scratch/bank" --concept nudity)

steps=" ${GPU_CHECK_STEPS:-step eager checkpointing adam profile} "
for key in $steps; do
    case $key in
        step | eager | kernels | adam | checkpointing | kernel-bench | profile | compile | attack) ;;
        *) echo "gpu_check: unknown step '$key' in GPU_CHECK_STEPS (steps: step eager kernels adam checkpointing kernel-bench profile compile attack, separated by spaces)"; exit 2 ;;
    esac
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
    python3 -c "import bitsandbytes as b; print('bitsandbytes', b.__version__)" 2>/dev/null || echo "bitsandbytes: not importable"
    python3 -c "import triton; print('triton', triton.__version__)" 2>/dev/null || echo "triton: not importable"
} > "$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

step step "reference vs fast" 300 python3 -m benchmarks.bench_step "${common[@]}" \
    --iterations "$fast_iterations" --reference-iterations 2 --json "$OUT/step.json"
step eager "fast, eager attack step" 90 python3 -m benchmarks.bench_step "${common[@]}" --engines fast \
    --iterations "$fast_iterations" --no-cuda-graphs --json "$OUT/fast-eager.json"
step kernels "kernel tests" 150 python3 -m pytest "${kernel_tests[@]}" tests/kernels
step adam "fast, torch Adam" 90 python3 -m benchmarks.bench_step "${common[@]}" --engines fast \
    --iterations "$fast_iterations" --optim adam --json "$OUT/fast-adam.json"
step checkpointing "fast, checkpointing" 90 python3 -m benchmarks.bench_step "${common[@]}" --engines fast \
    --iterations "$fast_iterations" --checkpointing --json "$OUT/fast-checkpointing.json"
step kernel-bench "kernel benchmark" 60 python3 -m benchmarks.bench_kernels --dtype bf16 "${kernel_bench[@]}" \
    --json "$OUT/kernels-bench.json"
step profile "fast, profiled" 120 python3 -m benchmarks.bench_step "${common[@]}" --engines fast \
    --iterations 3 --profile --json "$OUT/fast-profile.json"
step compile "fast, --compile" 400 python3 -m benchmarks.bench_step "${common[@]}" --engines fast \
    --iterations $((fast_iterations + 2)) --compile --run-dir "$scratch/compile" --json "$OUT/fast-compile.json"
[ -f "$scratch/compile/fast/log.jsonl" ] && cp "$scratch/compile/fast/log.jsonl" "$OUT/compile-log.jsonl"
step attack "attack (UnlearnDiffAtk)" 300 python3 -m benchmarks.bench_attack "${attack[@]}" --json "$OUT/attack.json"

python3 - "$OUT" > "$OUT/summary.txt" <<'EOF'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print(f"{'run':<22} {'engine':<10} {'optim':<9} {'ckpt':<5} {'s/iter':>8} {'peak GiB':>9} {'reserved GiB':>13}  attack step")
for name in ("step", "fast-eager", "fast-adam", "fast-checkpointing", "fast-compile"):
    path = out / f"{name}.json"
    if not path.is_file():
        print(f"{name:<22} (no result)")
        continue
    report = json.loads(path.read_text())
    for engine, r in report["engines"].items():
        reserved = r["peak_reserved_mb"] / 1024 if r["peak_reserved_mb"] is not None else float("nan")
        print(f"{name:<22} {engine:<10} {r['optim']:<9} {str(r['checkpointing']):<5} {r['s_per_iter']:>8.2f} "
              f"{r['peak_mb'] / 1024:>9.2f} {reserved:>13.2f}  {r.get('attack_step', '?')}")
profiled = out / "fast-profile.json"
if profiled.is_file():
    from benchmarks.bench_step import profile_line
    print("fast engine, " + profile_line(json.loads(profiled.read_text())["engines"]["fast"]["profile"], top=3))
eager = out / "fast-eager.json"
step = out / "step.json"
if eager.is_file() and step.is_file():  # same seed and settings: the graphs must not change the run
    graphed_run = json.loads(step.read_text())["engines"]["fast"]
    eager_run = json.loads(eager.read_text())["engines"]["fast"]
    pairs = list(zip(graphed_run["loss_all"] + graphed_run["attack_loss_end_all"],
                     eager_run["loss_all"] + eager_run["attack_loss_end_all"]))
    worst = max(abs(a - b) / max(abs(b), 1e-12) for a, b in pairs)
    print(f"attack step {graphed_run['attack_step']} vs eager: {eager_run['s_per_iter'] / graphed_run['s_per_iter']:.2f}x "
          f"faster iterations ({graphed_run['s_per_iter']:.2f} vs {eager_run['s_per_iter']:.2f} s); losses of the "
          f"{len(pairs) // 2} iterations differ by at most {100 * worst:.2g}% (relative)")
if step.is_file():
    report = json.loads(step.read_text())
    if "speedup" in report:
        print(f"device {report['device']}: fast engine {report['speedup']:.1f}x faster per iteration, "
              f"{report['unet_fwd_equiv_ratio']:.1f}x fewer UNet forward-equivalents; bank built in "
              f"{report['bank_build_s']:.1f} s; 1000 iterations, all attacked (the published run's 200 "
              f"warm-up ones are not), would take about {1000 * report['fast_s_per_iter'] / 3600:.2f} h")
attack = out / "attack.json"
if attack.is_file():
    r = json.loads(attack.read_text())
    print(f"attack ({r['attack_step']}, batch {r['settings']['batch_size']}): {r['s_per_prompt_per_block']:.2f} s per "
          f"prompt per block, {r['s_per_prompt_per_judged_generation']:.2f} s per judged generation, peak "
          f"{r['peak_mb'] / 1024:.2f} GiB; 142 prompts x 50 blocks: {r['projected_i2p_nudity_s'] / 3600:.1f} h")
EOF
printf '%s\n' ${status[@]+"${status[@]}"} >> "$OUT/summary.txt"
echo "== summary (${SECONDS}s)"
cat "$OUT/summary.txt"
rm -rf "$scratch"
