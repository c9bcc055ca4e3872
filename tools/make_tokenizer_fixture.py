"""Record OpenAI `clip.tokenize(..., truncate=True)` ids for tests/fixtures/clip_tokenize_ids.json.

Run once, with the real `clip` package in a throwaway location (never a project dependency):

    pip download --no-deps openai-clip -d /tmp/dl && tar xzf /tmp/dl/openai-clip-1.0.1.tar.gz -C /tmp/dl
    pip install --target /tmp/cliptgt --no-deps /tmp/dl/openai-clip-1.0.1.tar.gz ftfy==6.3.1 wcwidth "setuptools<70"
    PYTHONPATH=/tmp/cliptgt python tools/make_tokenizer_fixture.py

`clip/__init__.py` imports torchvision for its image transforms, which `tokenize` never uses; when
no torchvision matching the installed torch is available, an empty stand-in module is registered so
that the unmodified `clip.tokenize` and `SimpleTokenizer` can be imported.
"""

import json
import os
import sys
import types

CAPTIONS = [
    "a photo of a cat",
    "A Photo Of A CAT sitting on the MAT.",
    "a man riding a wave on top of a surfboard",
    "two dogs, one brown & one white, play in the park!",
    "it's the dog's toy; they're here, we've seen it, I'm sure you'll like it, he'd go",
    "numbers: 12345 and 3.14159 and 1,000,000",
    "   leading and trailing   whitespace\tand\ttabs\nand newlines   ",
    "“curly double quotes” and ‘curly single’ quotes",
    "em—dash – en dash … ellipsis",
    "café naïve résumé Ångström",
    "cafe\u0301 with a combining accent",
    "ﬁsh and ﬂowers in the ﬀield",
    "ＦＵＬＬＷＩＤＴＨ ｔｅｘｔ　ideographic space",
    "日本語のキャプション 中文标题",
    "emoji 🐱🐶🍕 and symbols ©®™ °C",
    "html entities &amp; &quot;quoted&quot; &lt;tag&gt; &amp;amp;",
    "control\x07chars\x0bhere\u200b and zero\ufeffwidth",
    "ALL CAPS WITH PUNCTUATION!!! ??? ...",
    "snake_case and kebab-case and CamelCase and e-mail@example.com",
    "Ünïcödé ÇÀSÉ mixing İstanbul ß",
    "",
    "a",
    " ".join(["a very long caption that keeps going"] * 20),
    "supercalifragilisticexpialidocious antidisestablishmentarianism " * 6,
]


def main(out_path: str) -> None:
    try:
        import torchvision  # noqa: F401
    except Exception:
        tv = types.ModuleType("torchvision")
        tv.transforms = types.ModuleType("torchvision.transforms")
        for name in ["Compose", "Resize", "CenterCrop", "ToTensor", "Normalize"]:
            setattr(tv.transforms, name, object)
        tv.transforms.InterpolationMode = types.SimpleNamespace(BICUBIC="bicubic")
        sys.modules["torchvision"] = tv
        sys.modules["torchvision.transforms"] = tv.transforms
    import clip
    import ftfy

    ids = clip.tokenize(CAPTIONS, truncate=True).tolist()
    record = {
        "source": "clip.tokenize(captions, truncate=True) from openai-clip 1.0.1 with ftfy "
                  f"{ftfy.__version__}; made by tools/make_tokenizer_fixture.py",
        "captions": CAPTIONS,
        "ids": ids,
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(record, f, ensure_ascii=True, indent=None)
        f.write("\n")
    print(f"wrote {len(CAPTIONS)} captions to {out_path}")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    main(os.path.join(here, "..", "tests", "fixtures", "clip_tokenize_ids.json"))
