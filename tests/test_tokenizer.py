import json
import os

import ftfy
import numpy as np
import pytest

from lip_jax.models import tokenizer as tk

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "clip_tokenize_ids.json")


@pytest.fixture(scope="module")
def clip_tok():
    return tk.get_tokenizer("clip")


@pytest.fixture(scope="module")
def reference():
    with open(FIXTURE, encoding="utf-8") as f:
        return json.load(f)


def test_ids_equal_openai_clip_tokenize(clip_tok, reference):
    ours = clip_tok(reference["captions"])
    ref = np.asarray(reference["ids"], np.int32)
    assert ours.dtype == np.int32 and ours.shape == ref.shape == (len(reference["captions"]), 77)
    bad = [c for c, a, b in zip(reference["captions"], ours, ref) if not np.array_equal(a, b)]
    assert not bad, f"ids differ from clip.tokenize for: {bad}"


def test_fixture_exercises_layout_and_cleanup(clip_tok, reference):
    ref = np.asarray(reference["ids"])
    assert clip_tok.vocab_size == 49408
    assert (ref[:, 0] == clip_tok.sot_id).all()
    # truncated rows end with EOT in the last slot, short rows are zero-padded after EOT
    long_rows = [i for i, c in enumerate(reference["captions"]) if len(clip_tok.encode(c)) > 75]
    assert long_rows and all(ref[i, -1] == clip_tok.eot_id for i in long_rows)
    assert ref[reference["captions"].index("a"), 3:].sum() == 0
    # ftfy's fixes matter for some fixture captions (curly quotes, ligatures, width)
    changed = [c for c in reference["captions"] if ftfy.fix_text(c) != c]
    assert len(changed) >= 4


def test_mojibake_is_repaired_as_clip_does(clip_tok):
    # UTF-8 read as cp1252 (and HTML-escaped on top): ftfy repairs it before BPE, as CLIP does.
    assert tk.clean_caption("Caf\u00c3\u00a9 &amp;amp;  Cr\u00c3\u00a8me") == "caf\u00e9 & cr\u00e8me"
    np.testing.assert_array_equal(clip_tok("cafÃ©"), clip_tok("café"))
    assert clip_tok.encode("cafÃ©") != clip_tok.encode("cafe")


def test_truncate_false_raises_and_decode_round_trip(clip_tok):
    with pytest.raises(ValueError, match="context length"):
        clip_tok(["word " * 100], truncate=False)
    ids = clip_tok("A cat, sitting on the MAT!")[0]
    assert clip_tok.decode(ids) == "a cat , sitting on the mat !"
    with pytest.raises(ValueError):
        clip_tok.encode(b"bytes")


def test_hf_tokenizer_directory_matches_on_plain_captions(clip_tok, tmp_path):
    # Build a Hugging Face CLIP tokenizer directory from the bundled vocabulary (no network).
    from transformers import CLIPTokenizer

    vocab = {s: i for s, i in clip_tok.encoder.items()}
    ranks = sorted(clip_tok._ranks.items(), key=lambda kv: kv[1])
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (tmp_path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m, _ in ranks) + "\n",
                                         encoding="utf-8")
    CLIPTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt")).save_pretrained(str(tmp_path / "hf"))
    hf = tk.HFTokenizer(str(tmp_path / "hf"))
    caps = ["a photo of a cat", "Two dogs play in the park.", "it's a red car, isn't it?"]
    np.testing.assert_array_equal(hf(caps), clip_tok(caps))


def test_byte_tokenizer():
    bt = tk.get_tokenizer("bytes", 16)
    ids = bt(["hé", "x" * 40])
    assert ids.shape == (2, 16) and ids.dtype == np.int32
    assert ids[0, :5].tolist() == [257, ord("h") + 1, 0xC3 + 1, 0xA9 + 1, 258] and ids[0, 5:].sum() == 0
    assert ids[1, -1] == 258 and ids.max() < bt.vocab_size
    assert bt.decode(ids[0]) == "hé"
