"""Random-access example sources.

Every source has ``len()`` and ``source[i]`` returning
``{"image": uint8 [H, W, 3], "text": str, "id": str}``; evaluation sets add
``mask`` (bool [H, W], True = hole) and ``masked_image`` (uint8 [H, W, 3]),
and multi-caption sets add ``captions`` (all of them; ``text`` is the first).
Listing files happens at construction (a missing or empty directory is a
`DataError` right away); decoding happens in ``__getitem__``, where an
unreadable image raises `DataError` naming the file, which the loader counts
and skips.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import os

import numpy as np
from etils import epath

from lip_jax.data.errors import DataError
from lip_jax.images import read_image, read_mask
from lip_jax.data.shapes import Shapes

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# The official code holds out the last 32 files of imagenet_train.txt for
# validation (config/dfvq4imagenet/__init__.py, ImageNetDataset).
IMAGENET_VAL_SIZE = 32


# Roots are read through epath, so a data root in an object store (gs://bucket/data) is listed and
# read there. epath.Path, not lip_jax.paths.path: a relative root stays as the user spelled it in
# messages, and reading needs no absolute path.
def _join(root, *parts) -> str:
    return str(epath.Path(root).joinpath(*parts))


def _text(path, encoding: str = "utf-8", newline: str | None = None) -> io.TextIOWrapper:
    """A text reader over epath's binary file (epath's text mode takes no encoding or newline)."""
    return io.TextIOWrapper(epath.Path(path).open("rb"), encoding=encoding, newline=newline)


def _walk(root: epath.Path):
    """Every file under `root`. Local: os.walk, which does not follow symlinked folders (a cycle
    ends); an object store has neither, and epath's walk drops gs:// from the folders it yields."""
    if "://" not in str(root):
        for directory, _, names in os.walk(root):
            yield from (epath.Path(directory) / n for n in names)
        return
    for child in root.iterdir():
        if child.is_dir():
            yield from _walk(child)
        else:
            yield child


def _require_dir(path, what: str) -> None:
    if not epath.Path(path).is_dir():
        raise DataError(f"{path}: {what} directory does not exist")


def _require_file(path, what: str) -> None:
    if not epath.Path(path).is_file():
        raise DataError(f"{path}: {what} file does not exist")


def _nonempty(items: list, where, what: str) -> list:
    if not items:
        raise DataError(f"{where}: no {what} found")
    return items


def read_text(path) -> str:
    """First line of a UTF-8 text file (a byte-order mark is dropped); `DataError` naming the file
    if it is not UTF-8."""
    try:
        with _text(path, encoding="utf-8-sig") as f:
            return f.readline().strip()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (invalid byte 0x{e.object[e.start]:02x}); "
                        f"save it as UTF-8") from None


class ImageNetList:
    """The official ImageNet layout: ``imagenet_train.txt`` lists image paths
    relative to ``root`` (class folders ``nXXXXXXXX/``). No captions (text="").

    split="train" is every listed file but the last 32, split="val" those 32.
    """

    def __init__(self, root, split: str = "train", list_file: str = "imagenet_train.txt"):
        _require_dir(root, "ImageNet")
        listing = _join(root, list_file)
        _require_file(listing, "ImageNet list")
        with _text(listing) as f:
            files = [line.strip() for line in f if line.strip()]
        if split == "train":
            files = files[:-IMAGENET_VAL_SIZE]
        elif split == "val":
            files = files[-IMAGENET_VAL_SIZE:]
        else:
            raise DataError(f"{listing}: unknown split {split!r} (train or val)")
        self.root, self.split = root, split
        self.files = _nonempty(files, listing, f"images for split {split!r}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        rel = self.files[i]
        return {"image": read_image(_join(self.root, rel)), "text": "", "id": rel}

    def __repr__(self) -> str:
        return f"ImageNetList(root={self.root!r}, split={self.split!r})"


class ConceptualCaptions:
    """The official Conceptual Captions layout under ``root``:
    ``utils/Train_GCC-training.tsv`` + ``train_image/`` and
    ``utils/Validation_GCC-1.1.0-Validation.tsv`` + ``val_image/``, the image
    of TSV row i being ``%08d.jpg % i``. Rows whose image is missing are
    skipped and counted in ``self.missing``.
    """

    LAYOUT = {
        "train": ("Train_GCC-training.tsv", "train_image"),
        "val": ("Validation_GCC-1.1.0-Validation.tsv", "val_image"),
    }

    def __init__(self, root, split: str = "train"):
        if split not in self.LAYOUT:
            raise DataError(f"{root}: unknown Conceptual Captions split {split!r} (train or val)")
        tsv_name, image_dir = self.LAYOUT[split]
        tsv = _join(root, "utils", tsv_name)
        self.image_dir = _join(root, image_dir)
        _require_file(tsv, "Conceptual Captions TSV")
        _require_dir(self.image_dir, "Conceptual Captions image")
        present = {p.name for p in epath.Path(self.image_dir).iterdir()}
        self.rows: list[tuple[str, str]] = []
        self.missing = 0
        with _text(tsv, newline="") as f:
            for i, row in enumerate(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)):
                name = "%08d.jpg" % i
                if name in present and row:
                    self.rows.append((name, row[0]))
                else:
                    self.missing += 1
        if self.missing:
            log.warning("%s: %d rows have no image in %s and are skipped",
                        tsv, self.missing, self.image_dir)
        self.root, self.split = root, split
        _nonempty(self.rows, tsv, "rows with an image")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        name, text = self.rows[i]
        return {"image": read_image(_join(self.image_dir, name)), "text": text,
                "id": name}

    def __repr__(self) -> str:
        return f"ConceptualCaptions(root={self.root!r}, split={self.split!r})"


class CocoCaptions:
    """The official MSCOCO layout under ``root``: ``train_data.json`` /
    ``val_data.json`` (a list of ``{"image_name", "captions"}``) with images in
    ``train2017/`` / ``val2017/``.
    """

    def __init__(self, root, split: str = "train"):
        if split not in ("train", "val"):
            raise DataError(f"{root}: unknown MSCOCO split {split!r} (train or val)")
        listing = _join(root, f"{split}_data.json")
        self.image_dir = _join(root, f"{split}2017")
        _require_file(listing, "MSCOCO caption list")
        _require_dir(self.image_dir, "MSCOCO image")
        try:
            with _text(listing) as f:
                entries = json.load(f)
            self.entries = [(e["image_name"], tuple(e["captions"])) for e in entries]
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"{listing}: expected a JSON list of "
                            f"{{image_name, captions}} ({e!r})") from None
        self.root, self.split = root, split
        _nonempty(self.entries, listing, "entries")

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int) -> dict:
        name, captions = self.entries[i]
        return {"image": read_image(_join(self.image_dir, name)),
                "text": captions[0] if captions else "", "captions": captions, "id": name}

    def __repr__(self) -> str:
        return f"CocoCaptions(root={self.root!r}, split={self.split!r})"


class MaskEvalFolder:
    """The evaluation layout of MaskCOCO / MaskFlickr / MaskVG / CustomDataset:
    ``gt/NNNN.png``, ``mask/NNNN.mask.png`` (non-zero = hole),
    ``mask_img/NNNN.png`` and ``guidance/NNNN.txt`` (first line = text).

    Every ``gt`` image must have its mask and guidance (checked at
    construction); ``mask_img`` is optional (the ground truth is used).
    """

    def __init__(self, root):
        _require_dir(root, "evaluation set")
        gt_dir = _join(root, "gt")
        _require_dir(gt_dir, "ground-truth (gt)")
        names = sorted(p.name[:-4] for p in epath.Path(gt_dir).iterdir() if p.name.endswith(".png"))
        self.root = root
        self.names = _nonempty(names, gt_dir, "ground-truth .png images")
        for name in self.names:
            _require_file(self._path("mask", name + ".mask.png"), "mask")
            _require_file(self._path("guidance", name + ".txt"), "guidance")

    def _path(self, folder: str, file: str) -> str:
        return _join(self.root, folder, file)

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, i: int) -> dict:
        name = self.names[i]
        image = read_image(self._path("gt", name + ".png"))
        masked_path = self._path("mask_img", name + ".png")
        masked = read_image(masked_path) if epath.Path(masked_path).is_file() else image
        mask = read_mask(self._path("mask", name + ".mask.png"), image.shape[:2])
        if masked.shape != image.shape:
            raise DataError(f"{masked_path}: size {masked.shape[:2]} differs from "
                            f"its ground truth {image.shape[:2]}")
        return {"image": image, "masked_image": masked, "mask": mask,
                "text": read_text(self._path("guidance", name + ".txt")), "id": name}

    def __repr__(self) -> str:
        return f"MaskEvalFolder(root={self.root!r})"


class ImageFolder:
    """Users' own data: every image under ``root`` (recursively), its caption
    in a same-name UTF-8 ``.txt`` beside it (optional, else "": stage 2 then
    trains that image on the empty text), and its mask in a same-name
    ``.mask.png`` beside it (optional; either all images have one or none do).
    """

    def __init__(self, root):
        _require_dir(root, "image")
        top = epath.Path(root)
        every = [f.relative_to(top).as_posix() for f in _walk(top)]
        files = [f for f in every if f.lower().endswith(IMAGE_EXTENSIONS) and not f.endswith(".mask.png")]
        self.root = root
        self.files = _nonempty(sorted(files), root, f"images ({'/'.join(IMAGE_EXTENSIONS)})")
        present = {f for f in every if f.endswith(".mask.png")}
        has_mask = [os.path.splitext(f)[0] + ".mask.png" in present for f in self.files]
        if any(has_mask) and not all(has_mask):
            missing = self.files[has_mask.index(False)]
            raise DataError(f"{self._sidecar(missing, '.mask.png')}: mask missing "
                            f"(some images in {root} have masks, so all need one)")
        self.with_masks = all(has_mask)

    def _sidecar(self, rel: str, suffix: str) -> str:
        return _join(self.root, os.path.splitext(rel)[0] + suffix)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        rel = self.files[i]
        image = read_image(_join(self.root, rel))
        caption = self._sidecar(rel, ".txt")
        example = {"image": image, "id": rel,
                   "text": read_text(caption) if epath.Path(caption).is_file() else ""}
        if self.with_masks:
            example["mask"] = read_mask(self._sidecar(rel, ".mask.png"), image.shape[:2])
        return example

    def __repr__(self) -> str:
        return f"ImageFolder(root={self.root!r})"


def _field(example: dict, path: str):
    # "captions/text" walks nested feature dicts.
    for key in path.split("/"):
        if key not in example:
            raise DataError(f"TFDS example has no field {path!r} (fields: {sorted(example)})")
        example = example[key]
    return example


def _as_str(value) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return str(value)


class Tfds:
    """Any TFDS image(+caption) dataset via ``tfds.data_source`` (array_record,
    random access; no TensorFlow at read time). Field names are
    ``/``-separated paths; a text field holding several captions (e.g.
    ``coco_captions``' ``captions/text``) yields them all in ``captions``.
    Pass ``data_source`` to wrap an already-opened one.
    """

    def __init__(self, name: str = "", split: str = "train", data_dir=None,
                 image_key: str = "image", text_key: str | None = None,
                 id_key: str | None = None, data_source=None):
        if data_source is None:
            import tensorflow_datasets as tfds
            try:
                data_source = tfds.data_source(name, split=split, data_dir=data_dir)
            except Exception as e:  # tfds raises many types for a missing dataset
                raise DataError(f"{data_dir or 'TFDS data dir'}: cannot open TFDS dataset "
                                f"{name!r} split {split!r} ({type(e).__name__}: {e})") from None
        self.source = data_source
        self.name, self.split = name, split
        self.image_key, self.text_key, self.id_key = image_key, text_key, id_key
        if len(self.source) == 0:
            raise DataError(f"TFDS {name!r} split {split!r}: no examples found")

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict:
        raw = self.source[i]
        image = np.asarray(_field(raw, self.image_key))
        if image.ndim == 2 or image.shape[-1] == 1:
            image = np.repeat(image.reshape(image.shape[:2] + (1,)), 3, axis=-1)
        example = {"image": image.astype(np.uint8, copy=False), "text": "",
                   "id": _as_str(_field(raw, self.id_key)) if self.id_key
                   else f"{self.name}/{self.split}/{i}"}
        if self.text_key:
            text = _field(raw, self.text_key)
            if isinstance(text, (bytes, str)):
                example["text"] = _as_str(text)
            else:
                example["captions"] = tuple(_as_str(t) for t in np.asarray(text).reshape(-1))
                example["text"] = example["captions"][0] if example["captions"] else ""
        return example

    def __repr__(self) -> str:
        return (f"Tfds(name={self.name!r}, split={self.split!r}, image_key={self.image_key!r}, "
                f"text_key={self.text_key!r})")


SOURCES = {
    "tfds": Tfds,
    "imagenet": ImageNetList,
    "cc": ConceptualCaptions,
    "coco": CocoCaptions,
    "mask_eval": MaskEvalFolder,
    "folder": ImageFolder,
    "shapes": Shapes,
}


def _parameters(cls) -> dict[str, inspect.Parameter]:
    return {k: p for k, p in inspect.signature(cls).parameters.items()}


def open_source(kind: str, **kwargs):
    """Build a source by name (see `SOURCES`) with its keyword arguments.

    A recipe's `source_kwargs` are written for its own source and stay when only `source` is
    overridden (`source=folder` on the COCO recipe keeps `split`), so a keyword that only other
    sources take is dropped with a note; one that no source takes is a typo and a `DataError`."""
    if kind not in SOURCES:
        raise DataError(f"unknown data source {kind!r}; choose one of {sorted(SOURCES)}")
    takes = _parameters(SOURCES[kind])
    unknown = sorted(set(kwargs).difference(*(_parameters(c) for c in SOURCES.values())))
    if unknown:
        raise DataError(f"data source {kind!r}: no source takes source_kwargs {unknown}; "
                        f"{kind!r} takes {sorted(takes)}")
    ignored = sorted(set(kwargs) - set(takes))
    if ignored:
        log.info("data source %r ignores source_kwargs %s (settings of other sources)", kind, ignored)
    missing = [k for k, p in takes.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise DataError(f"data source {kind!r} needs source_kwargs.{missing[0]}")
    return SOURCES[kind](**{k: v for k, v in kwargs.items() if k in takes})
