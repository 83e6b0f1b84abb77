#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (device time is scarce): the GPU tests (CUDA, fp16/bf16 autocast,
# exact resume, torchrun on NCCL with SyncBatchNorm, the memory estimate) and the side-by-side speed against
# pytorch-fcn. Uses the machine's own python3 with PyTorch; the peer's sources travel in .whl/ (see
# docs/gpu.md). Logs go to $OUT (or gpu_out/).
set -uo pipefail
out=${OUT:-gpu_out}
mkdir -p "$out"
export PYTHONPATH=$PWD/src:$PWD/benchmarks:$(ls -d "$PWD"/.whl/torchfcn-*/ 2>/dev/null | head -1) PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  lscpu | grep 'Model name'
  python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
} 2>&1 | tee "$out/machine.txt"
timeout 330 python3 -m pytest tests/test_gpu.py -p no:cacheprovider -rA -s 2>&1 | tee "$out/gpu-tests.log" | tail -40
timeout 150 python3 benchmarks/gpu_side_by_side.py 2>&1 | tee "$out/gpu-bench.log"
