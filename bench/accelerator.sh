#!/usr/bin/env bash
# The real-depth checks on one GPU, in one run (about 10 minutes on an H100): the 0.5B RLSC step with bf16
# compute against PyTorch, the plan's figures against the paper's 1.5B step measured, and the sampler against
# `generate`. Each part has its own time limit, so one that hangs or fails leaves the others' results.
#
#   bash bench/accelerator.sh OUT_DIR [PLAN_JSON]
#
# PLAN_JSON: `python -m rlsc_jax.plan --config configs/paper_qwen25_math_1.5b.yaml
# model=configs/models/qwen2.5-math-1.5b --devices 1 --prompt-len 256 --hardware h100-80gb --json FILE`, written
# beforehand on any machine (saves compiling it on the GPU host); without it plan_check.py runs the plan itself.
set -u
out=${1:?usage: bash bench/accelerator.sh OUT_DIR [PLAN_JSON]}
plan=${2:-}
mkdir -p "$out"
export JAX_PLATFORMS=cuda XLA_PYTHON_CLIENT_PREALLOCATE=false PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
py=${PYTHON:-python3}

nvidia-smi -L
$py -c 'import jax, flax, optax, torch, transformers as t; print("jax", jax.__version__, jax.devices(), "flax",
flax.__version__, "optax", optax.__version__, "torch", torch.__version__, "transformers", t.__version__)'

timeout 200 $py bench/train_step.py --compute-dtype bfloat16 --completion-len 256 --iters 3 \
    --json "$out/train_step.json" 2>&1 | tee "$out/train_step.log"
timeout 220 $py bench/plan_check.py --config configs/paper_qwen25_math_1.5b.yaml \
    model=configs/models/qwen2.5-math-1.5b --prompt-len 256 ${plan:+--plan-json "$plan"} \
    --json "$out/plan_check.json" 2>&1 | tee "$out/plan_check.log"
timeout 170 $py bench/sampling.py --new-tokens 256 --prompts 1 4 --iters 1 \
    --json "$out/sampling.json" 2>&1 | tee "$out/sampling.log"
