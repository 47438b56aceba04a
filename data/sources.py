"""Where training reads its images from. A split is a list of image rows with their captions; a source
turns rows into the tensors the model reads: pixels for a ViT trained with the decoder, or cached CLIP
features. A source returns tensors and never calls the model."""

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.batches import make_batch
from data.images import ImageError, load_image_array, normalize
from data.shapes import make_split


@dataclass
class Split:
    rows: np.ndarray  # row of each image in the image source
    references: list  # reference captions per image (what a generated caption is scored against)
    targets: list  # captions per image that training teaches


class PixelSource:
    """Images held in memory as uint8; the model's trainable ViT encodes them on every step."""

    def __init__(self, pixels):
        self.pixels = pixels  # (n, 3, S, S) uint8

    def get(self, rows, device):
        """The model's inputs for these rows: {"images": (B, 3, S, S) normalised}."""
        return {"images": normalize(self.pixels[torch.as_tensor(rows)].to(device))}


class CachedFeatureSource:
    """Frozen CLIP features read from the memory-mapped cache (data/features.py); no image is decoded again."""

    def __init__(self, cache):
        self.cache = cache

    def get(self, rows, device):
        """The model's inputs for these rows: {"features": (clip_embed (B, E), patches (B, N, C))}."""
        return {"features": self.cache.get(rows, device)}


def load_shapes(counts, image_size, seed, all_references=False):
    """The built-in dataset: counts {"train": n, "val": n, "test": n} -> (splits, PixelSource)."""
    splits, pixels, start = {}, [], 0
    for name, count in counts.items():
        scenes = make_split(name, count, image_size, seed)
        pixels.append(torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2))  # (n, 3, S, S)
        references = [s.captions for s in scenes]
        # The first reference names the objects in reading order (left or top first). Teaching only that
        # order lets the model learn in minutes; both orders are accepted when scoring.
        targets = references if all_references else [r[:1] for r in references]
        splits[name] = Split(np.arange(start, start + count), references, targets)
        start += count
    return splits, PixelSource(torch.cat(pixels).contiguous())


def caption_splits(captions, row_of):
    """train / val / test Splits of a CaptionSet, keeping the images `row_of` maps to an image-source row."""
    splits = {}
    for split in ("train", "val", "test"):
        kept = [n for n in captions.names(split) if n in row_of]
        refs = [captions.captions[n] for n in kept]
        splits[split] = Split(np.array([row_of[n] for n in kept], dtype=np.int64), refs, refs)
    return splits


def load_image_rows(folder, names, image_size):
    """Every readable image of `names` in `folder`, squashed to image_size, held in memory.

    Returns (PixelSource, {name: row}); an unreadable image is reported by name and left out.
    """
    arrays, row_of = [], {}
    for name in tqdm(names, desc="images", unit="img"):
        try:
            arrays.append(load_image_array(Path(folder) / name, image_size))
            row_of[name] = len(arrays) - 1
        except ImageError as e:
            tqdm.write(f"skipped {e}")
    if len(row_of) < len(names):
        print(f"{len(names) - len(row_of)} of {len(names)} images could not be read and were skipped")
    if not arrays:
        raise ImageError(f"{folder}: none of the {len(names)} captioned images can be read")
    return PixelSource(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()), row_of


def get_batch(pairs, source, pad_id, device):
    """(image row, caption ids) pairs -> (inputs, tokens, targets, lengths) on `device`, for the model."""
    tokens, targets, lengths = make_batch([ids for _, ids in pairs], pad_id)
    inputs = source.get([row for row, _ in pairs], device)
    return inputs, tokens.to(device), targets.to(device), lengths.to(device)


def batches_by_length(pairs, source, pad_id, device, batch_size):
    """Every pair once, in batches of similar caption length (almost no padding): for validation."""
    ordered = sorted(pairs, key=lambda pair: len(pair[1]))
    for i in range(0, len(ordered), batch_size):
        yield get_batch(ordered[i : i + batch_size], source, pad_id, device)
