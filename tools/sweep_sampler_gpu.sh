#!/bin/bash
# The sampler experiments planned for the next GPU session (batch 1 is 5.7x its bandwidth floor and
# looks launch-bound): each variant in its own process, since XLA_FLAGS is read at start-up.
#   scan / unroll            decoder layers as one lax.scan, or unrolled (one longer kernel sequence)
#   *_nocb                   XLA command buffers (CUDA graphs) off: do they help as they are?
#   *_cbloops                command buffers also for while loops and conditionals
# Usage: tools/sweep_sampler_gpu.sh OUT_DIR [batch] [preset]   (JAX with CUDA; one summary per variant
# is printed, the logs and profiler traces stay in OUT_DIR; tools/trace_summary.py reads a trace again.
# On a CPU it runs, e.g. with preset tiny, but says only that its traces hold no device kernels.)
set -u
out=${1:?usage: tools/sweep_sampler_gpu.sh OUT_DIR [batch] [preset]}; batch=${2:-1}; preset=${3:-cc}
mkdir -p "$out" || exit 2
cd "$(dirname "$0")/.." || exit 2
bench="${PYTHON:-python3} tools/bench_sample.py --presets $preset --batch $batch --reps 2 --max-recompute-s 0 --config.dtype=bfloat16 --mem-bw-gbs 3350"
loops=FUSION,CUBLAS,CUBLASLT,CUSTOM_CALL,CUDNN,WHILE,CONDITIONAL
variant() {
  local name=$1 flags=$2; shift 2
  local t0=$SECONDS
  XLA_FLAGS="$flags" $bench "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "=== $name: exit $rc, $((SECONDS - t0)) s, XLA_FLAGS=[$flags] $*"
  grep -E "^\| $preset |^Bandwidth floor|idle|no device kernels|^\| (matmul|attention|other|copy|convolution|collective) " "$out/$name.log"
  [ $rc = 0 ] || tail -3 "$out/$name.log"
}
variant scan "" --config.scan_layers=true --trace "$out/trace_scan"
variant unroll "" --config.scan_layers=false --trace "$out/trace_unroll"
variant scan_nocb "--xla_gpu_enable_command_buffer=" --config.scan_layers=true
variant scan_cbloops "--xla_gpu_enable_command_buffer=$loops" --config.scan_layers=true --trace "$out/trace_scan_cbloops"
variant unroll_cbloops "--xla_gpu_enable_command_buffer=$loops" --config.scan_layers=false
