import hashlib
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from lip_jax.data import pipeline
from lip_jax.data import (STAGE1_AUGMENT, DataError, ImageFolder, Loader,
                          MaskEvalFolder, PipelineConfig, Shapes, token_mask)
from lip_jax.models.tokenizer import ByteTokenizer

from test_data_sources import make_eval_folder

SIZE = 32


def config(**overrides):
    base = dict(image_size=SIZE, batch_size=4, worker_count=0, seed=5)
    base.update(overrides)
    return PipelineConfig(**base)


def test_batch_layout_and_mask_consistency():
    it = iter(Loader(Shapes(12, 40), config(), process_index=0, process_count=1))
    batch = next(it)
    assert sorted(batch) == ["decoder_none", "image", "mask", "masked_image", "text_ids",
                             "token_mask"]
    assert batch["image"].dtype == np.float32 and batch["image"].shape == (4, SIZE, SIZE, 3)
    assert batch["image"].min() >= -1 and batch["image"].max() <= 1
    assert batch["mask"].dtype == bool and batch["mask"].shape == (4, SIZE, SIZE)
    np.testing.assert_array_equal(batch["token_mask"], token_mask(batch["mask"], 8))
    assert batch["token_mask"].shape == (4, SIZE // 8, SIZE // 8)
    hole = batch["mask"]
    assert (batch["masked_image"][hole] == 0).all()
    np.testing.assert_array_equal(batch["masked_image"][~hole], batch["image"][~hole])
    assert batch["text_ids"].dtype == np.int32 and batch["text_ids"].shape == (4, 77)
    # Without a tokenizer the ids are the models' byte tokenizer's: SOT first, one EOT.
    assert (batch["text_ids"][:, 0] == ByteTokenizer.sot_id).all()
    assert ((batch["text_ids"] == ByteTokenizer.eot_id).sum(1) == 1).all()
    assert batch["decoder_none"].dtype == bool and not batch["decoder_none"].any()


def test_given_tokenizer_is_used():
    def tokenizer(texts):
        return np.array([[len(t), 7] for t in texts], np.int32)
    cfg = config(with_ids=True, shuffle=False)
    batch = next(iter(Loader(Shapes(4, 16), cfg, tokenizer, process_index=0, process_count=1)))
    texts = [Shapes(4, 16)[i]["text"] for i in range(4)]
    np.testing.assert_array_equal(batch["text_ids"], [[len(t), 7] for t in texts])


def test_two_hosts_see_every_example_exactly_once_per_epoch():
    source = Shapes(23, 16)
    cfg = config(num_epochs=1, drop_remainder=False, with_ids=True)
    seen = []
    for host in (0, 1):
        ids = [i for b in Loader(source, cfg, process_index=host, process_count=2)
               for i in b["id"]]
        seen.append(ids)
    assert not set(seen[0]) & set(seen[1])
    everything = seen[0] + seen[1]
    assert sorted(everything) == sorted(source[i]["id"] for i in range(23))
    assert abs(len(seen[0]) - len(seen[1])) <= 1


def test_same_seed_same_stream_other_seed_other_stream():
    def first(seed):
        return next(iter(Loader(Shapes(8, 40), config(seed=seed), process_index=0,
                                process_count=1)))
    a, b, c = first(1), first(1), first(2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image"], c["image"])


def test_stage1_mixture_sets_decoder_flag():
    cfg = config(mask="stage1", augment=STAGE1_AUGMENT, batch_size=32)
    batch = next(iter(Loader(Shapes(64, 40), cfg, process_index=0, process_count=1)))
    flags, masks = batch["decoder_none"], batch["mask"]
    assert flags.any() and not flags.all()
    empty = ~masks.any(axis=(1, 2))
    assert empty.any() and flags[empty].all()


def make_folder_with_corrupt_file(root, n=10, bad=(3,)):
    for i in range(n):
        path = root / f"{i:02d}.png"
        if i in bad:
            path.write_bytes(b"\x89PNG broken")
        else:
            Image.fromarray(np.full((20, 24, 3), 10 * i, np.uint8)).save(path)
    return ImageFolder(root)


def test_corrupt_images_are_skipped_and_counted(tmp_path, caplog):
    source = make_folder_with_corrupt_file(tmp_path)
    cfg = config(num_epochs=1, batch_size=3, with_ids=True, shuffle=False)
    it = iter(Loader(source, cfg, process_index=0, process_count=1))
    batches = list(it)
    assert [len(b["id"]) for b in batches] == [3, 3, 3]  # full batches despite the gap
    assert sorted(i for b in batches for i in b["id"]) == [
        f"{i:02d}.png" for i in range(10) if i != 3]
    assert it.stats.skipped == 1 and it.stats.examples == 9 and it.stats.batches == 3
    assert "03.png" in it.stats.recent_errors[0]
    assert "03.png" in caplog.text


def test_state_restored_mid_chunk_after_a_skip(tmp_path):
    source = make_folder_with_corrupt_file(tmp_path, n=14, bad=(1, 6))
    cfg = config(batch_size=4, seed=3)
    reference = iter(Loader(source, cfg, process_index=0, process_count=1))
    for _ in range(2):
        next(reference)
    state = json.loads(json.dumps(reference.get_state()))
    assert state["offset"] > 0  # the skip left part of a worker chunk unread
    expected = [next(reference) for _ in range(4)]
    resumed = iter(Loader(source, cfg, process_index=0, process_count=1))
    resumed.set_state(state)
    for want in expected:
        got = next(resumed)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    assert resumed.stats == reference.stats


def test_evaluation_set_keeps_its_masks_and_masked_images(tmp_path):
    make_eval_folder(tmp_path, n=3, size=SIZE)
    source = MaskEvalFolder(tmp_path)
    cfg = config(mask="source", augment=None, shuffle=False, num_epochs=1, batch_size=3,
                 training=False)
    batch = next(iter(Loader(source, cfg, process_index=0, process_count=1)))
    for i in range(3):
        example = source[i]
        np.testing.assert_array_equal(batch["mask"][i], example["mask"])
        np.testing.assert_allclose(batch["image"][i], example["image"] / 127.5 - 1, atol=1e-6)
        keep = ~example["mask"]
        np.testing.assert_allclose(batch["masked_image"][i][keep],
                                   example["masked_image"][keep] / 127.5 - 1, atol=1e-6)
        assert (batch["masked_image"][i][example["mask"]] == 0).all()


def test_bad_configuration_is_a_clear_error():
    with pytest.raises(DataError, match="unknown mask"):
        Loader(Shapes(4, 16), config(mask="blobs"), process_index=0, process_count=1)
    with pytest.raises(DataError, match="multiple of vae_patch_size"):
        Loader(Shapes(4, 16), config(image_size=20), process_index=0, process_count=1)
    with pytest.raises(DataError, match="process_index 2"):
        Loader(Shapes(4, 16), config(), process_index=2, process_count=2)
    with pytest.raises(DataError, match="examples have no mask"):
        Loader(Shapes(4, 16), config(mask="source"), process_index=0, process_count=1)


def test_a_source_of_only_broken_files_stops_with_an_error(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "MAX_ERRORS_IN_A_ROW", 6)
    source = make_folder_with_corrupt_file(tmp_path, n=4, bad=(0, 1, 2, 3))
    it = iter(Loader(source, config(), process_index=0, process_count=1))
    with pytest.raises(DataError, match="8 unreadable examples in a row; last: .*0[0-3].png"):
        next(it)


RESUME_SCRIPT = textwrap.dedent("""
    import sys
    from etils import epath
    from lip_jax.train.checkpoints import DataRestore, DataStateHandler
    from test_data_pipeline import digest, training_loader

    if __name__ == "__main__":
        it = training_loader()
        DataStateHandler().restore(epath.Path(sys.argv[1]), DataRestore(it))
        print(" ".join(digest(next(it)) for _ in range(3)))
""")


def digest(batch):
    h = hashlib.sha256()
    for key in sorted(batch):
        h.update(key.encode())
        h.update(batch[key].tobytes())
    return h.hexdigest()


def training_loader():
    """The iterator training reads (one process, one shard), over small shapes, with workers."""
    from lip_jax.config import apply_overrides, load_config
    from lip_jax.train.trainer import HostLoader

    config = load_config(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs",
                                      "test_stage1.py"))
    apply_overrides(config, ["data.source_kwargs.num_examples=40", "data.source_kwargs.image_size=48",
                             "data.workers=2", "data.seed=11", "data.mask=brush"])
    return HostLoader(config, process_index=0, process_count=1)


def test_iterator_state_restores_in_a_new_process_with_workers(tmp_path):
    # Through the checkpoint's data item, as training saves and resumes it.
    from etils import epath
    from lip_jax.train.checkpoints import DataSave, DataStateHandler

    it = training_loader()
    for _ in range(3):
        next(it)
    DataStateHandler().save(epath.Path(tmp_path), DataSave(it))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard_0-of-1.json"]
    expected = " ".join(digest(next(it)) for _ in range(3))
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, str(script), str(tmp_path)],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == expected
