"""The train state's companions in an orbax checkpoint: the data-iterator state, saved and restored
beside the model's arrays (the arrays themselves go through orbax's standard handler; parameters
alone are stored by lip_jax.weights.store)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import orbax.checkpoint as ocp


class DataStateHandler(ocp.CheckpointHandler):
    """The data-iterator state, one JSON file per fixed data shard (`shard_S-of-N.json`, written by
    the process that reads shard S), so a run resumes on another number of hosts: each process
    reads the files of the shards it reads now. The item decides the file names:
    `item.state_files() -> {name: state}`, `item.restore_files(read, names)` with
    `read(name) -> state`."""

    def save(self, directory, args: "DataSave"):
        for name, state in args.item.state_files().items():
            (directory / name).write_text(json.dumps(state))

    def restore(self, directory, args: "DataRestore"):
        names = sorted(p.name for p in directory.iterdir() if p.name.endswith(".json"))
        args.item.restore_files(lambda name: json.loads((directory / name).read_text()), names)
        return args.item

    def metadata(self, directory):
        return None

    def structure(self, directory):
        return None

    def finalize(self, directory):
        pass

    def close(self):
        pass


@ocp.args.register_with_handler(DataStateHandler, for_save=True)
@dataclasses.dataclass
class DataSave(ocp.args.CheckpointArgs):
    item: Any


@ocp.args.register_with_handler(DataStateHandler, for_restore=True)
@dataclasses.dataclass
class DataRestore(ocp.args.CheckpointArgs):
    item: Any
