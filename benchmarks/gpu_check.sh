#!/usr/bin/env bash
# The GPU checks of issue 6, in under 8 minutes on one GPU (random weights; the golden tiny32 for correctness):
#   1. the golden checks on CUDA (likelihood, latents, bf16 change, reproducible sampling, torch.compile);
#   2. ffhq1024 sample(4, temperature=0.8): latency and peak memory, fp32 and bf16;
#   3. ffhq256 and imagenet64 likelihood and sampling throughput at batch 16: fp32 (true float32) against TF32
#      and bf16 + channels_last.
#   4. (issue 26) ffhq256 likelihood memory per batch size (cuda_memory.py: is the harness fix enough?), and one
#      training step's peak and time with and without gradient checkpointing (train_memory.py).
# Results go to $OUT (default benchmarks/results) as JSON. Usage: bash benchmarks/gpu_check.sh [quick]
# "quick" runs only step 4 (the issue-26 figures) when device time is short.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name(0))"

memory_checks() {
  timeout 120 python benchmarks/cuda_memory.py --preset ffhq256 --batches 1,4,16 --trace-batch 4 \
    --json "$OUT/ffhq256_memory.json" || echo "cuda_memory: FAILED ($?)"
  timeout 150 python benchmarks/train_memory.py --device cuda --preset imagenet64 --batches 1,4 \
    --json "$OUT/train_memory_cuda.json" || echo "train_memory imagenet64: FAILED ($?)"
  timeout 150 python benchmarks/train_memory.py --device cuda --preset ffhq256 --batches 1,4 \
    --json "$OUT/train_memory_cuda.json" || echo "train_memory ffhq256: FAILED ($?)"
}
if [ "${1:-}" = "quick" ]; then memory_checks; ls -l "$OUT"; exit 0; fi

GOLDEN=""
for g in tests/golden; do [ -d "$g/tiny32" ] && GOLDEN="$g" && break; done
if [ -n "$GOLDEN" ]; then
  timeout 150 python benchmarks/cuda_golden.py --golden "$GOLDEN" --compile --json "$OUT/cuda_golden.json" || echo "cuda_golden: FAILED ($?)"
else
  echo "cuda_golden: tests/golden is missing, skipped"
fi

timeout 120 python benchmarks/bench.py --preset ffhq1024 --device cuda --modes sample --batch-size 4 \
  --variants fp32,bf16 --repeats 2 --json "$OUT/ffhq1024_sample.json" || echo "ffhq1024: FAILED ($?)"
for preset in ffhq256 imagenet64; do
  timeout 170 python benchmarks/bench.py --preset "$preset" --device cuda --modes likelihood,sample --batch-size 16 \
    --variants fp32,tf32,bf16_cl --repeats 2 --json "$OUT/${preset}_b16.json" || echo "$preset: FAILED ($?)"
done
memory_checks
ls -l "$OUT"
