"""Text tokenizers producing CLIP-style id arrays: [SOT] ids [EOT] 0 0 ... (int32, context 77).

* `ClipTokenizer`: CLIP's byte-level BPE (vocabulary 49408) read from the bundled, MIT-licensed
  `assets/bpe_simple_vocab_16e6.txt.gz`. Same ids as OpenAI's `clip.tokenize(text, truncate=True)`,
  including its clean-up: `ftfy.fix_text` (mojibake repair such as "cafÃ©" -> "café" included),
  HTML unescaping twice, whitespace collapsed, lower case.
* `HFTokenizer`: any Hugging Face tokenizer (directory or hub name) through `transformers`, laid out
  the same way.
* `ByteTokenizer`: UTF-8 bytes (vocabulary 259) for tiny test/demo configurations.

`get_tokenizer(spec)` picks one from a config string.
"""

from __future__ import annotations

import functools
import gzip
import html
import os
from typing import Sequence

import ftfy
import numpy as np
import regex

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_BPE = os.path.join(ASSETS, "bpe_simple_vocab_16e6.txt.gz")
CONTEXT_LENGTH = 77

# CLIP keeps the first 48894 merges of the file (vocabulary = 2 * 256 bytes + merges + 2 specials).
_NUM_MERGES = 49152 - 256 - 2
_SOT, _EOT = "<|startoftext|>", "<|endoftext|>"

# Word pieces: the two specials, English contractions, letter runs, single digits, other symbol runs.
_PIECES = regex.compile(
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    regex.IGNORECASE)
_SPACES = regex.compile(r"\s+")


def clean_caption(text: str) -> str:
    # The order of OpenAI's simple_tokenizer: basic_clean, whitespace_clean, lower.
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip().lower()


@functools.lru_cache()
def _byte_alphabet() -> dict[int, str]:
    """Reversible byte -> printable unicode character map of GPT-2/CLIP byte-level BPE."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table  # insertion order (printable bytes first) is the vocabulary order


def _layout(seqs: Sequence[Sequence[int]], sot: int, eot: int, context_length: int, truncate: bool) -> np.ndarray:
    out = np.zeros((len(seqs), context_length), np.int32)
    for i, ids in enumerate(seqs):
        row = [sot, *ids, eot]
        if len(row) > context_length:
            if not truncate:
                raise ValueError(f"caption {i} has {len(row)} tokens > context length {context_length}")
            row = row[:context_length - 1] + [eot]
        out[i, :len(row)] = row
    return out


class ClipTokenizer:
    """CLIP byte-level BPE; `__call__` matches `clip.tokenize(texts, truncate=True)`."""

    def __init__(self, bpe_path: str = DEFAULT_BPE, context_length: int = CONTEXT_LENGTH):
        if not os.path.exists(bpe_path):
            raise ValueError(f"BPE vocabulary not found: {bpe_path}")
        with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")[1:_NUM_MERGES + 1]
        merges = [tuple(line.split()) for line in lines]
        self._bytes = _byte_alphabet()
        symbols = list(self._bytes.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [_SOT, _EOT]
        self.encoder = {s: i for i, s in enumerate(vocab)}
        self.decoder = {i: s for s, i in self.encoder.items()}
        self._ranks = {m: i for i, m in enumerate(merges)}
        self._cache = {_SOT: (_SOT,), _EOT: (_EOT,)}
        self.context_length = context_length
        self.vocab_size = len(vocab)
        self.sot_id, self.eot_id = self.encoder[_SOT], self.encoder[_EOT]

    def _bpe(self, piece: str) -> tuple[str, ...]:
        if piece in self._cache:
            return self._cache[piece]
        word = list(piece[:-1]) + [piece[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self._ranks.get(pair, None), i) for i, pair in enumerate(zip(word, word[1:]))]
            ranked = [(r, i) for r, i in ranked if r is not None]
            if not ranked:
                break
            _, at = min(ranked)
            first, second = word[at], word[at + 1]
            merged, i = [], 0
            while i < len(word):  # merge every occurrence of the best pair, left to right
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[piece] = tuple(word)
        return self._cache[piece]

    def encode(self, text: str) -> list[int]:
        """Ids of a caption without start/end tokens."""
        if not isinstance(text, str):
            raise ValueError(f"caption must be str, got {type(text).__name__}")
        ids = []
        for piece in _PIECES.findall(clean_caption(text)):
            mapped = "".join(self._bytes[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[s] for s in self._bpe(mapped))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        """Caption text of an id row (stops at the first EOT; lower-cased, spaces around symbols)."""
        inverse = {c: b for b, c in self._bytes.items()}
        ids = [int(i) for i in ids]
        ids = ids[:ids.index(self.eot_id)] if self.eot_id in ids else ids
        text = "".join(self.decoder[i] for i in ids if i != self.sot_id)
        raw = bytearray(inverse[c] for c in text)
        return raw.decode("utf-8", errors="replace").replace("</w>", " ").strip()

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None,
                 truncate: bool = True) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _layout([self.encode(t) for t in texts], self.sot_id, self.eot_id,
                       context_length or self.context_length, truncate)


class HFTokenizer:
    """A `transformers` tokenizer (directory or hub name) in the CLIP layout (SOT ... EOT, 0-padded)."""

    def __init__(self, name_or_path: str, context_length: int = CONTEXT_LENGTH):
        from transformers import AutoTokenizer

        self.tok = AutoTokenizer.from_pretrained(name_or_path)
        self.context_length = context_length
        self.vocab_size = len(self.tok)
        self.sot_id = self.tok.bos_token_id if self.tok.bos_token_id is not None else self.tok.cls_token_id
        self.eot_id = self.tok.eos_token_id if self.tok.eos_token_id is not None else self.tok.sep_token_id
        if self.sot_id is None or self.eot_id is None:
            raise ValueError(f"{name_or_path}: tokenizer has no start/end token")

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def __call__(self, texts, context_length: int | None = None, truncate: bool = True) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _layout([self.encode(t) for t in texts], self.sot_id, self.eot_id,
                       context_length or self.context_length, truncate)


class ByteTokenizer:
    """UTF-8 bytes as ids 1..256 (0 is padding), SOT 257, EOT 258: for tiny configs only."""

    vocab_size = 259
    sot_id, eot_id = 257, 258

    def __init__(self, context_length: int = CONTEXT_LENGTH):
        self.context_length = context_length

    def encode(self, text: str) -> list[int]:
        if not isinstance(text, str):
            raise ValueError(f"caption must be str, got {type(text).__name__}")
        return [b + 1 for b in text.encode("utf-8")]

    def decode(self, ids: Sequence[int]) -> str:
        return bytes(int(i) - 1 for i in ids if 1 <= int(i) <= 256).decode("utf-8", errors="replace")

    def __call__(self, texts, context_length: int | None = None, truncate: bool = True) -> np.ndarray:
        texts = [texts] if isinstance(texts, str) else list(texts)
        return _layout([self.encode(t) for t in texts], self.sot_id, self.eot_id,
                       context_length or self.context_length, truncate)


@functools.lru_cache(maxsize=8)
def get_tokenizer(spec: str = "clip", context_length: int = CONTEXT_LENGTH):
    """'clip' (bundled BPE), 'bytes', a path to a BPE .txt.gz, or a Hugging Face dir / hub name."""
    if spec == "clip":
        return ClipTokenizer(DEFAULT_BPE, context_length)
    if spec == "bytes":
        return ByteTokenizer(context_length)
    if spec.endswith(".txt.gz"):
        return ClipTokenizer(spec, context_length)
    return HFTokenizer(spec, context_length)
