"""MP-S2S fine-tuning on MS-COCO, the official `config/mps4coco/base.py` recipe.

Same model as configs/mps_cc.py; fine-tuning starts from the CC pre-training (`train.init_ckpt`: an
orbax MP-S2S checkpoint, e.g. converted from the released `epoch66-chunk-0.pth`).
"""

import os

from lip_jax.config import load_config


def get_config(arg=None):
    c = load_config(os.path.join(os.path.dirname(os.path.abspath(__file__)), "mps_cc.py") + ":" + (arg or "coco"))
    c.data.source = "coco"
    c.data.source_kwargs = dict(root="", split="train")
    c.train.init_ckpt = "ckpt/mps_cc"
    return c
