#!/usr/bin/env bash
# N training processes on this machine, joined by jax.distributed (CPU: gloo collectives).
#   launch/local_multiprocess.sh NPROC DEVICES_PER_PROC CONFIG WORKDIR [--config.key=value ...]
# Each process sees DEVICES_PER_PROC (forced host) devices and reads only its data shards.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 NPROC DEVICES_PER_PROC CONFIG WORKDIR [overrides...]" >&2; exit 2; }
nproc=$1; ndev=$2; config=$3; workdir=$4; shift 4
port=${PORT:-$((20000 + RANDOM % 20000))}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < nproc; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$ndev" JAX_PLATFORMS=cpu \
    lip-jax train --config "$config" --workdir "$workdir" \
      --config.distributed.enabled=True --config.distributed.coordinator_address="127.0.0.1:$port" \
      --config.distributed.num_processes="$nproc" --config.distributed.process_id="$i" \
      --config.distributed.cpu_collectives=gloo "$@" &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit $status
