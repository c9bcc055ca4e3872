import json
import os

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from lip_jax.data import (CocoCaptions, ConceptualCaptions, DataError, ImageFolder, ImageNetList,
                          MaskEvalFolder, Tfds, open_source)
from lip_jax.images import read_image


def write_image(path, value, size=(12, 10), fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.full((size[0], size[1], 3), value, np.uint8)
    Image.fromarray(array).save(path, format=fmt)
    return array


def test_read_image_reports_the_corrupt_file(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    with pytest.raises(DataError, match="broken.jpg: cannot decode image"):
        read_image(tmp_path / "broken.jpg")


def test_imagenet_list_layout(tmp_path):
    lines = []
    for i in range(35):
        rel = f"n0144{i % 3}/img_{i}.JPEG"
        write_image(tmp_path / rel, i, fmt="PNG")  # lossless, so values read back exactly
        lines.append(rel)
    (tmp_path / "imagenet_train.txt").write_text("\n".join(lines) + "\n")
    train, val = ImageNetList(tmp_path, "train"), ImageNetList(tmp_path, "val")
    assert len(train) == 3 and len(val) == 32  # the official last-32 hold-out
    example = val[5]
    assert example["id"] == lines[8] and example["text"] == ""
    assert (example["image"] == 8).all() and example["image"].shape == (12, 10, 3)


def test_conceptual_captions_layout_skips_and_counts_missing_images(tmp_path):
    rows = ["a dog on a beach\thttp://x/0", "a red car\thttp://x/1",
            "two cats\thttp://x/2", "a \"quoted\" title\thttp://x/3"]
    (tmp_path / "utils").mkdir()
    (tmp_path / "utils" / "Train_GCC-training.tsv").write_text("\n".join(rows) + "\n")
    for i in (0, 2, 3):
        write_image(tmp_path / "train_image" / f"{i:08d}.jpg", 10 * i, fmt="PNG")
    cc = ConceptualCaptions(tmp_path, "train")
    assert len(cc) == 3 and cc.missing == 1
    assert [cc[i]["text"] for i in range(3)] == ["a dog on a beach", "two cats",
                                                 'a "quoted" title']
    assert cc[1]["id"] == "00000002.jpg" and (cc[1]["image"] == 20).all()
    with pytest.raises(DataError, match="Validation_GCC-1.1.0-Validation.tsv"):
        ConceptualCaptions(tmp_path, "val")


def test_coco_json_layout(tmp_path):
    write_image(tmp_path / "val2017" / "000000000139.jpg", 50, fmt="PNG")
    (tmp_path / "val_data.json").write_text(json.dumps(
        [{"image_name": "000000000139.jpg", "captions": ["a room", "a living room"]}]))
    coco = CocoCaptions(tmp_path, "val")
    example = coco[0]
    assert example["text"] == "a room" and example["captions"] == ("a room", "a living room")
    (tmp_path / "train_data.json").write_text("{not json")
    (tmp_path / "train2017").mkdir()
    with pytest.raises(DataError, match="train_data.json"):
        CocoCaptions(tmp_path, "train")


def make_eval_folder(root, n=3, size=16):
    rng = np.random.default_rng(0)
    for i in range(n):
        name = f"{i:04d}"
        gt = write_image(root / "gt" / f"{name}.png", 40 * i + 10, (size, size))
        mask = np.zeros((size, size), np.uint8)
        mask[2:6 + i, 3:9] = 255
        (root / "mask").mkdir(exist_ok=True)
        Image.fromarray(mask).save(root / "mask" / f"{name}.mask.png")
        masked = gt.copy()
        masked[mask > 0] = rng.integers(0, 255)
        (root / "mask_img").mkdir(exist_ok=True)
        Image.fromarray(masked).save(root / "mask_img" / f"{name}.png")
        (root / "guidance").mkdir(exist_ok=True)
        (root / "guidance" / f"{name}.txt").write_text(f"a guidance {i}\nsecond line\n")


def test_mask_eval_layout(tmp_path):
    make_eval_folder(tmp_path)
    ds = MaskEvalFolder(tmp_path)
    assert len(ds) == 3
    example = ds[1]
    assert example["id"] == "0001" and example["text"] == "a guidance 1"
    assert example["mask"].dtype == bool and example["mask"][2:7, 3:9].all()
    assert example["mask"].sum() == 5 * 6
    assert (example["image"] == 50).all()
    assert (example["masked_image"][~example["mask"]] == 50).all()
    (tmp_path / "guidance" / "0002.txt").unlink()
    with pytest.raises(DataError, match="0002.txt"):
        MaskEvalFolder(tmp_path)


def test_image_folder_with_captions_and_masks(tmp_path):
    write_image(tmp_path / "a.png", 1)
    write_image(tmp_path / "sub" / "b.jpg", 2)
    (tmp_path / "a.txt").write_text("a caption\n")
    ds = ImageFolder(tmp_path)
    assert len(ds) == 2 and not ds.with_masks
    assert ds[0]["text"] == "a caption" and ds[1]["text"] == "" and ds[1]["id"] == "sub/b.jpg"
    Image.fromarray(np.full((12, 10), 255, np.uint8)).save(tmp_path / "a.mask.png")
    with pytest.raises(DataError, match="b.mask.png: mask missing"):
        ImageFolder(tmp_path)
    Image.fromarray(np.zeros((12, 10), np.uint8)).save(tmp_path / "sub" / "b.mask.png")
    ds = ImageFolder(tmp_path)
    assert len(ds) == 2 and ds[0]["mask"].all() and not ds[1]["mask"].any()


def test_stage2_recipe_trains_on_a_folder(tmp_path):
    # The recipe's source_kwargs (root, split) are written for CC; `source=folder` keeps them.
    from lip_jax.config import apply_overrides, load_config
    from lip_jax.train.trainer import HostLoader

    for i in range(3):
        write_image(tmp_path / f"{i}.png", 60 * i, size=(40, 48))
    (tmp_path / "0.txt").write_text("a red car\n")
    config = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                      "mps_cc.py"))
    apply_overrides(config, ["data.source=folder", f"data.source_kwargs.root={tmp_path}", "data.workers=0",
                             "data.batch_size=3"])
    batch = next(HostLoader(config, process_index=0, process_count=1))
    size = config.data.image_size
    assert batch["image"].shape == (3, size, size, 3) and batch["mask"].any()
    ids = batch["text_ids"]
    assert ids.shape == (3, config.mps.text_len)
    # Images without a sidecar caption are trained with the empty text: start and end tokens only.
    assert sorted(int((row > 0).sum()) for row in ids) == [2, 2, 5]


def test_non_utf8_caption_is_a_data_error_naming_the_file(tmp_path):
    write_image(tmp_path / "a.png", 1)
    (tmp_path / "a.txt").write_bytes("caf\u00e9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"a\.txt: not UTF-8"):
        ImageFolder(tmp_path)[0]


def test_source_kwargs_no_source_takes_are_an_error(tmp_path):
    write_image(tmp_path / "a.png", 1)
    assert len(open_source("folder", root=str(tmp_path), split="val")) == 1  # another source's setting
    with pytest.raises(DataError, match=r"no source takes source_kwargs \['spilt'\]"):
        open_source("folder", root=str(tmp_path), spilt="val")
    with pytest.raises(DataError, match="needs source_kwargs.root"):
        open_source("folder")


def test_missing_or_empty_directories_fail_at_start(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty: no images"):
        ImageFolder(tmp_path / "empty")
    with pytest.raises(DataError, match="imagenet_train.txt"):
        ImageNetList(tmp_path / "empty")
    with pytest.raises(DataError, match="unknown data source"):
        open_source("webdataset")


def test_tfds_data_source_on_a_tiny_array_record_dataset(tmp_path):
    class LipJaxTinyCaptions(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "captions": tfds.features.Sequence({"text": tfds.features.Text()}),
                "image_id": tfds.features.Scalar(np.int64),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples()}

        def _generate_examples(self):
            for i in range(5):
                # PIL images: encoding numpy arrays would need TensorFlow.
                image = Image.fromarray(np.full((6, 4, 3), 20 * i, np.uint8))
                yield i, {"image": image, "image_id": 100 + i,
                          "captions": {"text": [f"caption {i}", f"other {i}"]}}

    LipJaxTinyCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    ds = Tfds("lip_jax_tiny_captions", "train", data_dir=str(tmp_path),
              text_key="captions/text", id_key="image_id")
    assert len(ds) == 5
    seen = set()
    for i in range(5):
        example = ds[i]
        k = int(example["id"]) - 100
        seen.add(k)
        assert (example["image"] == 20 * k).all() and example["image"].shape == (6, 4, 3)
        assert example["captions"] == (f"caption {k}", f"other {k}")
        assert example["text"] == f"caption {k}"
    assert seen == set(range(5))
    with pytest.raises(DataError, match="no field 'caption'"):
        Tfds("lip_jax_tiny_captions", "train", data_dir=str(tmp_path), text_key="caption")[0]
    with pytest.raises(DataError, match="cannot open TFDS dataset"):
        Tfds("lip_jax_tiny_captions", "test", data_dir=str(tmp_path))


def test_stage2_training_on_a_folder_runs_from_the_cli(tmp_path, capsys):
    """`lip-jax train` of a stage-2 recipe with `--config.data.source=folder`, end to end."""
    import flax.linen as nn
    import jax

    from lip_jax.config import load_config
    from lip_jax.cli import main
    from lip_jax.models import dfvqgan
    from lip_jax.weights.store import save_params

    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "test_stage2.py")
    vq = str(tmp_path / "vq")
    save_params(vq, nn.unbox(dfvqgan.init_params(dfvqgan.from_config(load_config(config).vqgan), jax.random.key(0))))
    for i in range(8):
        write_image(tmp_path / "photos" / f"{i}.png", 30 * i, size=(40, 48))
        (tmp_path / "photos" / f"{i}.txt").write_text(f"photo number {i}\n")
    rc = main(["train", "--config", config, "--workdir", str(tmp_path / "run"), f"--config.vqgan_ckpt={vq}",
               "--config.data.source=folder", f"--config.data.source_kwargs.root={tmp_path / 'photos'}",
               "--config.train.total_steps=2"])
    assert rc == 0, capsys.readouterr().err[-2000:]
    assert os.path.isdir(tmp_path / "run" / "params")
