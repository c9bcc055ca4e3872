"""MP-S2S fine-tuning on MS-COCO (official config/mps4coco/base.py).

The model is identical to configs/mps_cc.py; the official file differs only in training-loop settings:
eval/save every 10 epochs (CC: every epoch), max_eval_samples 32, and `pretrained_model` pointing at
the CC checkpoint `checkpoint/pretrained/epoch66-chunk-0.pth` (the `patch_size = 8` field it adds is
unused). config/lip4maskcoco/base.py (NUWA-LIP on MaskCOCO) wraps the same network as `painter`,
loaded from a checkpoint, with learning_rate 1.5e-3, eval/save every 50 and no training augmentation.
"""

import importlib.util
import os

# config files are loaded by path (ml_collections config_flags): load the sibling the same way
_spec = importlib.util.spec_from_file_location("_mps_cc", os.path.join(os.path.dirname(os.path.abspath(__file__)), "mps_cc.py"))
_mps_cc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_mps_cc)
build = _mps_cc.build

COCO = dict(eval_step=10, save_step=10, max_eval_samples=32)


def get_config(arg=None):
    config = build(arg or "coco", COCO)
    config.init_checkpoint = "checkpoint/pretrained/epoch66-chunk-0.pth"  # MP-S2S after CC pre-training
    return config
