"""Regions of an image: a box or a mask in the image's own pixels, and the patches of the model's view
that it covers. Region captions (Alpha-CLIP's idea, with attention masks) let cross-attention look only
at those patches, and make the prefix from the region's crop."""

import math

import numpy as np
import torch

from data.images import patch_boxes
from model.errors import CaptionerError


class RegionError(CaptionerError):
    """A region that cannot be used; the message says why in one sentence."""


def parse_box(text):
    """"x0,y0,x1,y1" -> four floats."""
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise RegionError(f"region {text[:80]!r}: expected four numbers x0,y0,x1,y1") from None
    return x0, y0, x1, y1


def fit_box(box, width, height, name):
    """The box (x0, y0, x1, y1) clipped to a width x height image; refused if empty or outside it."""
    x0, y0, x1, y1 = (float(v) for v in box)
    shown = ",".join(f"{v:g}" for v in (x0, y0, x1, y1))
    if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
        raise RegionError(f"region {shown}: every coordinate must be a finite number")
    if x1 <= x0 or y1 <= y0:
        raise RegionError(f"region {shown}: empty box (x1 must exceed x0 and y1 exceed y0)")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise RegionError(f"region {shown} lies outside {name} ({width}x{height})")
    return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)


def mask_region(mask_image, width, height, name):
    """A mask picture (white inside the region), resized to the image -> (box around it, (H, W) bool mask)."""
    mask = np.asarray(mask_image.convert("L").resize((width, height))) > 127  # (H, W)
    if not mask.any():
        raise RegionError(f"region mask {name}: no white pixel, the region is empty")
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), mask


def region_patch_mask(spec, width, height, grid, box, mask=None):
    """(grid*grid,) True for the patches of the model's view that overlap the region.

    spec: the model's preprocessing (how the image is resized and cropped); box in original pixels;
    mask: (H, W) bool, to keep only patches that hold at least one masked pixel.
    """
    boxes = patch_boxes(spec, width, height, grid)  # (N, 4) in original pixels
    x0, y0, x1, y1 = box
    overlap = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    if mask is not None:
        for i in torch.nonzero(overlap).flatten().tolist():
            bx0, by0, bx1, by1 = (int(round(float(v))) for v in boxes[i])
            overlap[i] = bool(mask[max(0, by0):max(0, by1), max(0, bx0):max(0, bx1)].any())
    if not overlap.any():
        raise RegionError(f"region {tuple(round(v, 1) for v in box)} covers no patch of the model's view of the image")
    return overlap
