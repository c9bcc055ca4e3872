#!/usr/bin/env bash
# Train on every worker of a TPU pod slice. JAX reads the topology from the TPU environment
# (jax.distributed.initialize() needs no arguments there).
#   launch/tpu_pod.sh TPU_NAME ZONE CONFIG gs://BUCKET/RUN [--config.key=value ...]
# - WORKDIR: a gs:// URL every worker writes to (checkpoints, params/, metrics, TensorBoard, samples
#   go there; a VM's disk vanishes with the VM). The repo must be at ~/lip-jax on each worker,
#   installed with `pip install -e ".[gcs]"` (gcsfs: every non-array file goes through etils.epath).
# - Preemption / maintenance: SIGTERM on any worker makes every worker save one agreed step and
#   exit 75. Rerun the same command, on this slice or on one of another size, to resume.
# - Another size: the checkpoint is resharded onto the new mesh and the data stream continues, if
#   data.shards (fixed data shards, default one per host) is a multiple of the new host count:
#   pass e.g. --config.data.shards=64 from the first run on.
set -euo pipefail
[ $# -ge 4 ] || { echo "usage: $0 TPU_NAME ZONE CONFIG gs://BUCKET/RUN [overrides...]" >&2; exit 2; }
tpu=$1; zone=$2; config=$3; workdir=$4; shift 4
case $workdir in
  gs://*) ;;
  *) echo "$0: warning: $workdir is not gs://: every worker must see the same directory" >&2 ;;
esac
printf -v extra '%q ' "$@"
status=0
gcloud compute tpus tpu-vm ssh "$tpu" --zone "$zone" --worker=all --command \
  "cd ~/lip-jax && lip-jax train --config $config --workdir $workdir --config.distributed.enabled=True $extra" \
  || status=$?
[ "$status" -eq 75 ] && echo "$0: interrupted with a checkpoint saved; rerun the same command to resume" >&2
exit "$status"
