#!/usr/bin/env bash
# One CPU session: every CPU figure of the README's per-capability table, AVX2 (emulated) first; the log
# records the load average at each step's start (a quiet machine gives the cleanest figures).
#   PYTHONPATH=$PWD bash benchmarks/cpu_session.sh
set -u
OUT=${OUT:-benchmarks/results}
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$OUT"
log="$OUT/cpu_session.log"
{ date -u; uptime; python3 -c "import torch; print('torch', torch.__version__)"; } >"$log" 2>&1
run() {  # name, limit seconds, command...
  local name=$1 limit=$2; shift 2
  echo "=== $name ($(date -u +%T), $(cut -d' ' -f1-3 /proc/loadavg))" >>"$log"
  timeout "$limit" "$@" >>"$log" 2>&1; echo "=== $name rc=$? ($(date -u +%T))" >>"$log"
}
for e in avx2 native; do
  run "cli_time $e" 900 python3 benchmarks/cli_time.py --emulate $e --out "$OUT/cli_time_cpu_$e.json"
  run "extract $e" 600 python3 benchmarks/extract_throughput.py --device cpu --emulate $e --out "$OUT/extract_throughput_cpu_$e.json"
  run "inference $e" 1200 python3 benchmarks/inference.py --device cpu --emulate $e --loaded 4 --out "$OUT/inference_cpu_$e.json"
  run "contention $e" 900 python3 benchmarks/contention.py --emulate $e --out "$OUT/contention_cpu_$e.json"
done
run decode 300 python3 benchmarks/decode.py --out "$OUT/decode_cpu.json"
echo "done $(date -u)" >>"$log"
