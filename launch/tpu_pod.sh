#!/usr/bin/env bash
# Run the same training command on every worker of a TPU pod slice (JAX reads the topology from
# the TPU environment: jax.distributed.initialize() needs no arguments there).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]
# WORKDIR must be shared by all workers (e.g. gs://bucket/run); the repo must be at ~/lip-jax on
# each worker (e.g. `gcloud compute tpus tpu-vm scp --worker=all`), installed with `pip install -e .`.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [overrides...]" >&2; exit 2; }
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
printf -v extra '%q ' "$@"
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/lip-jax && lip-jax train --config $config --workdir $workdir --config.distributed.enabled=True $extra"
