#!/usr/bin/env bash
# One prepared GPU session (device tool): every CUDA benchmark once, results to $OUT.
#   PYTHONPATH=$PWD bash benchmarks/gpu_session.sh
set -u
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$OUT"
log="$OUT/gpu_session.log"
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch, torchvision; print('torch', torch.__version__, 'torchvision', torchvision.__version__)"
} >"$log" 2>&1
run() {  # name, limit seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%T))" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1; echo "=== $name rc=$? ($(date -u +%T))" >>"$log"
}
run profile 200 python3 benchmarks/gpu_profile.py --device cuda --out "$OUT/gpu_profile_cuda.json"
run extract 150 python3 benchmarks/extract_throughput.py --device cuda --out "$OUT/extract_throughput_cuda.json"
run inference 120 python3 benchmarks/inference.py --device cuda --out "$OUT/inference_cuda.json"
run cv_speed 120 python3 benchmarks/cv_speed.py --device cuda --cache /tmp/real_size.h5 --out "$OUT/cv_speed_cuda.json"
run sweep 120 python3 benchmarks/sweep_speed.py --device cuda --cache /tmp/real_size.h5 --out "$OUT/sweep_speed_cuda.json"
tail -n 60 "$log"
