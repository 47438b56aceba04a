"""Caption files as users have them, read into one structure: image name -> reference captions.

Formats, recognised from the content:
  karpathy   dataset_flickr30k.json / dataset_coco.json  {"images": [{"filename", "split", "sentences": [{"raw"}]}]}
  coco       captions_train2014.json                       {"images": [{"id", "file_name"}], "annotations": [...]}
  kaggle     results.csv                                   image_name| comment_number| comment
  token      results_20130124.token                        1000092795.jpg#0<TAB>Two young guys ...
  flickr8k   captions.txt                                  image,caption
  imagefolder  metadata.csv / metadata.jsonl beside the images (Hugging Face's imagefolder layout):
             file_name,text[,split] or {"file_name": ..., "text": ..., "split": ...} per line
             ("caption" is read where there is no "text"; without a split column: a seeded random split)
COCO Karpathy files name each image by its "filepath" and "filename" (train2014/COCO_train2014_...jpg), so
--images is the folder that holds train2014/ and val2014/. A name that would leave --images (an absolute path,
a '..') is never read: it counts as missing.
Errors name the file and the line, in one sentence.
"""

import csv
import io
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from model.errors import CaptionerError


class CaptionFileError(CaptionerError):
    """A caption file that cannot be read; the message names the file and the line."""


@dataclass
class CaptionSet:
    captions: dict  # image file name -> list of reference captions, in file order
    splits: dict = field(default_factory=dict)  # image file name -> "train" / "val" / "test", if the file says
    format: str = ""

    def names(self, split=None):
        """Image names of one split (all if None), sorted."""
        return sorted(n for n in self.captions if split is None or self.splits.get(n) == split)


def decode_utf8(path, raw):
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise CaptionFileError(f"{path}, line {line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r}); "
                               "save the file as UTF-8") from None


def add(captions, path, line, name, caption):
    name, caption = name.strip(), caption.strip()
    if not name:
        raise CaptionFileError(f"{path}, line {line}: no image name")
    if not caption:
        raise CaptionFileError(f"{path}, line {line}: empty caption for {name}")
    captions.setdefault(name, []).append(caption)


def read_karpathy(path, data):
    captions, splits = {}, {}
    for i, image in enumerate(data["images"]):
        if "filename" not in image or "sentences" not in image:
            raise CaptionFileError(f"{path}: images[{i}] lacks 'filename' or 'sentences'")
        name = f"{image['filepath']}/{image['filename']}" if image.get("filepath") else image["filename"]
        for j, sentence in enumerate(image["sentences"]):
            if not isinstance(sentence, dict):
                raise CaptionFileError(f"{path}: images[{i}].sentences[{j}] is {type(sentence).__name__} "
                                       f"{str(sentence)[:40]!r}; expected {{\"raw\": \"the caption\"}}")
            add(captions, path, f"images[{i}]", name, sentence.get("raw", ""))
        split = image.get("split")
        splits[name] = "train" if split == "restval" else split
    return CaptionSet(captions, splits, "karpathy")


def read_coco(path, data):
    names = {image["id"]: image["file_name"] for image in data["images"]}
    captions = {}
    for i, a in enumerate(data["annotations"]):
        if a.get("image_id") not in names:
            raise CaptionFileError(f"{path}: annotations[{i}] names image_id {a.get('image_id')}, "
                                   "which is not in 'images'")
        add(captions, path, f"annotations[{i}]", names[a["image_id"]], a.get("caption", ""))
    return CaptionSet(captions, {}, "coco")


def parse_json(path, text, line=None):
    """json.loads(text), or one line naming `path` (and the `line` text came from): invalid JSON, or JSON nested
    deeper than Python's parser recurses (json raises RecursionError there)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise CaptionFileError(f"{path}, line {line or e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise CaptionFileError(f"{path}{f', line {line}' if line else ''}: JSON nested too deeply to read") from None


def csv_rows(path, reader):
    """The rows of a csv reader, or one line naming `path` and the line the csv module cannot read (a field over
    its limit of 131,072 characters, for one)."""
    try:
        yield from reader
    except csv.Error as e:
        line = getattr(reader, "reader", reader).line_num  # a DictReader counts lines only after a row is read
        raise CaptionFileError(f"{path}, line {line}: not valid CSV ({e})") from None


def read_json(path, text):
    data = parse_json(path, text)
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        try:
            if "annotations" in data:
                return read_coco(path, data)
            if all("sentences" in image for image in data["images"][:1]):
                return read_karpathy(path, data)
        except (AttributeError, TypeError, KeyError, RecursionError) as e:  # a value of the wrong kind somewhere
            raise CaptionFileError(f"{path}: an entry of an unexpected shape ({type(e).__name__}: {str(e)[:60]})"
                                   f"; see the {'COCO' if 'annotations' in data else 'Karpathy'} layout in "
                                   "data/captions.py") from None
    raise CaptionFileError(f"{path}: JSON that is neither a Karpathy split file ('images' with 'sentences') "
                           "nor a COCO captions file ('images' and 'annotations')")


def read_kaggle(path, lines):
    captions = {}
    for n, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        parts = line.split("|")
        if len(parts) < 3:
            raise CaptionFileError(f"{path}, line {n}: expected 'image_name| comment_number| comment' "
                                   f"separated by '|', found {len(parts) - 1} separators")
        add(captions, path, n, parts[0], "|".join(parts[2:]))
    return CaptionSet(captions, {}, "kaggle")


def read_token(path, lines):
    captions = {}
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = re.match(r"^([^#\t]+)#\d+\t(.*)$", line)
        if match is None:
            raise CaptionFileError(f"{path}, line {n}: expected 'name.jpg#k<TAB>caption'")
        add(captions, path, n, match.group(1), match.group(2))
    return CaptionSet(captions, {}, "token")


def read_flickr8k(path, text):
    captions = {}
    rows = csv_rows(path, csv.reader(io.StringIO(text)))
    next(rows)  # header
    for n, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) < 2:
            raise CaptionFileError(f"{path}, line {n}: expected 'image,caption', found no ','")
        add(captions, path, n, row[0], ",".join(row[1:]))
    return CaptionSet(captions, {}, "flickr8k")


SPLIT_NAMES = {"train": "train", "training": "train", "restval": "train", "val": "val", "valid": "val",
               "validation": "val", "test": "test"}  # imagefolder's split column, as Hugging Face spells them


def read_metadata(path, rows):
    """Hugging Face imagefolder metadata: rows of {file_name, text (or caption), split (optional)}, each
    as (line number, dict)."""
    captions, splits = {}, {}
    for n, row in rows:
        if not isinstance(row, dict) or "file_name" not in row or not ({"text", "caption"} & set(row)):
            raise CaptionFileError(f"{path}, line {n}: expected the fields file_name and text (or caption)")
        name, text = row["file_name"], row.get("text", row.get("caption"))
        if not isinstance(name, str) or not isinstance(text, str):
            raise CaptionFileError(f"{path}, line {n}: file_name and text must be strings")
        add(captions, path, n, name, text)
        if row.get("split"):
            if str(row["split"]).lower() not in SPLIT_NAMES:
                raise CaptionFileError(f"{path}, line {n}: split {row['split']!r} is not train, val or test")
            splits[name.strip()] = SPLIT_NAMES[str(row["split"]).lower()]
    if splits and len(splits) < len(captions):
        raise CaptionFileError(f"{path}: some rows have a split and some do not; give every row one, or none")
    return CaptionSet(captions, splits, "imagefolder")


def metadata_rows(path, text):
    """(line number, row) of a metadata.jsonl (one JSON object a line) or metadata.csv (a header line)."""
    if text.lstrip().startswith("{"):
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if line.strip():
                rows.append((n, parse_json(path, line, line=n)))
        return rows
    reader = csv.DictReader(io.StringIO(text))
    return [(n, row) for n, row in enumerate(csv_rows(path, reader), 2)]


def read_captions(path, val_fraction=0.05, test_fraction=0.05, seed=0):
    """Read any supported caption file. Formats without splits get a seeded random split of the images."""
    path = Path(path)
    if not path.is_file():
        raise CaptionFileError(f"{path}: no such caption file")
    text = decode_utf8(path, path.read_bytes())
    lines = text.splitlines()
    first = lines[0] if lines else ""
    if path.suffix in (".csv", ".jsonl") and path.stem == "metadata" or first.replace(" ", "").startswith(
            ("file_name,", '{"file_name"')):
        result = read_metadata(path, metadata_rows(path, text))
    elif text.lstrip().startswith("{"):
        result = read_json(path, text)
    elif first.replace(" ", "").lower().startswith("image_name|"):
        result = read_kaggle(path, lines)
    elif first.replace(" ", "").lower().startswith("image,caption"):
        result = read_flickr8k(path, text)
    elif re.match(r"^[^#\t]+#\d+\t", first):
        result = read_token(path, lines)
    elif first.lower().startswith("image_name") or first.lower().startswith("image"):
        raise CaptionFileError(f"{path}, line 1: a header with an unexpected separator; Kaggle files use "
                               "'image_name| comment_number| comment', Flickr8k files 'image,caption'")
    else:
        raise CaptionFileError(f"{path}, line 1: not a caption format this reader knows (Karpathy or COCO JSON, "
                               "Kaggle results.csv, Flickr30k .token, Flickr8k captions.txt)")
    if not result.captions:
        raise CaptionFileError(f"{path}: no captions in the file")
    if not result.splits:
        result.splits = random_splits(sorted(result.captions), val_fraction, test_fraction, seed)
    return result


def image_id(name):
    """The number COCO and Flickr30k name an image by: the last run of digits in its file name
    (COCO_val2014_000000000042.jpg: 42, 1000092795.jpg: 1000092795); the name itself where it has none."""
    digits = re.findall(r"\d+", Path(str(name)).stem)
    return int(digits[-1]) if digits else Path(str(name)).name


def random_splits(names, val_fraction, test_fraction, seed):
    """A reproducible split for files that carry none."""
    shuffled = names[:]
    random.Random(seed).shuffle(shuffled)
    n_val, n_test = round(len(names) * val_fraction), round(len(names) * test_fraction)
    splits = {name: "train" for name in shuffled}
    splits.update({name: "val" for name in shuffled[:n_val]})
    splits.update({name: "test" for name in shuffled[n_val : n_val + n_test]})
    return splits


def image_path(folder, name):
    """folder / name for an image a caption file names, in a subfolder or not (COCO's train2014/...), or None if
    the name would leave the folder: an absolute path, or a '..' among its parts."""
    parts = PurePosixPath(name).parts
    if not parts or parts[0] == "/" or ".." in parts:
        return None
    return Path(folder, *parts)


def check_images(captions: CaptionSet, folder, skip_missing=False):
    """Images the captions name but the folder lacks (a name that would leave the folder, or that is no regular
    file there, counts as missing): an error with the count and the first few names, or, with skip_missing,
    dropped from the set. Returns the number dropped."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CaptionFileError(f"{folder}: no such images folder")
    missing = [name for name in sorted(captions.captions) if not (path := image_path(folder, name)) or not path.is_file()]
    if missing and not skip_missing:
        raise CaptionFileError(f"{folder}: {len(missing)} of {len(captions.captions)} captioned images are missing "
                               f"(first: {', '.join(missing[:5])}); pass --skip-missing to train without them")
    for name in missing:
        del captions.captions[name]
        captions.splits.pop(name, None)
    return len(missing)
