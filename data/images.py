"""Open any image a user has as an 8-bit RGB picture, or say in one line which file is wrong and why."""

import os
import stat
import warnings
from contextlib import nullcontext

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from model.errors import CaptionerError
from model.files import file_kind

MAX_PIXELS = 100_000_000  # larger images are refused before they are decoded (a 10k x 10k photo still loads)
MAX_SCANS = 100  # most scans a JPEG may have: a progressive photo has about 10, and each walks every block again


class ImageError(CaptionerError):
    """An image that cannot be used; the message names the file."""


class ImageTooLarge(ImageError):
    """An image with more pixels than the loader accepts (a decompression bomb, or just too big)."""


def to_rgb(image):
    """Any PIL mode -> RGB: 16-bit and float scaled down to 8 bits, transparency laid on white."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0
        image = Image.fromarray((values / top * 255).clip(0, 255).round().astype(np.uint8))
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(white, rgba)
    return image.convert("RGB")


def load_image(path, max_pixels=MAX_PIXELS, name=None, seen_at=None):
    """Read `path` (a file name, or a binary file object such as an upload in memory) as an RGB PIL image
    with its EXIF orientation applied.

    seen_at: the side in pixels of the model's square input. A picture much larger is then decoded at a
    reduced scale where the format allows (JPEG's draft) and reduced by a whole factor as soon as it is
    decoded, keeping its shorter side at least REDUCING_GAP * seen_at (resizing from there is, in PIL's words,
    indistinguishable from fair resampling); the full-size picture is held only while it decodes. The
    image's `original_size` attribute then gives its size before reduction, which its regions refer to.
    Raises ImageError with the file's name (or `name`) and the reason.
    """
    name = name or path
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies instead
            with opened_regular_file(path, name) as source, Image.open(source) as image:
                w, h = image.size
                if w * h > max_pixels:
                    raise ImageTooLarge(f"{name}: {w}x{h} pixels is more than the {max_pixels:,} this loader accepts")
                if w == 0 or h == 0:
                    raise ImageError(f"{name}: the image is empty ({w}x{h})")
                if image.format in ("JPEG", "MPO") and (scans := jpeg_scans(source)) > MAX_SCANS:
                    raise ImageError(f"{name}: a JPEG of {scans:,} scans, where this loader decodes at most "
                                     f"{MAX_SCANS} (a progressive photo has about 10)")
                if seen_at is None:
                    return to_rgb(ImageOps.exif_transpose(image))
                turn = ORIENTATION.get(image.getexif().get(EXIF_ORIENTATION))
                picture = to_rgb(reduced(image, REDUCING_GAP * seen_at))
                picture = picture.transpose(turn) if turn is not None else picture
                picture.original_size = (h, w) if turn in SWAPS_SIDES else (w, h)
                return picture
    except ImageError:
        raise
    except FileNotFoundError:
        raise ImageError(f"{name}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{name}: is a folder, not an image") from None
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image file that PIL can read") from None
    except Image.DecompressionBombError as e:
        raise ImageTooLarge(f"{name}: too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{name}: damaged or truncated image ({e})") from None


def opened_regular_file(path, name):
    """`path` opened for reading if it is a regular file (links followed), or a file object as given. A named pipe
    (opening or reading it waits for a writer that may never come), a device (/dev/zero never ends) or a folder
    is an ImageError naming it. The file is opened without waiting and checked once open, so it cannot be swapped
    between the check and the reading."""
    if not isinstance(path, (str, os.PathLike)):
        return nullcontext(path)  # an upload in memory, or a file the caller opened
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    mode = os.fstat(fd).st_mode
    if stat.S_ISREG(mode):
        return os.fdopen(fd, "rb")
    os.close(fd)
    if stat.S_ISDIR(mode):
        raise ImageError(f"{name}: is a folder, not an image")
    raise ImageError(f"{name}: {file_kind(mode)}, not a regular file")


def jpeg_scans(source):
    """How many scans the JPEG file object `source` holds: its SOS markers (bytes FF DA), counted from its start
    in chunks, its position kept. A scan's coded data never holds FF DA (a data byte FF is written FF 00), so
    every scan a decoder would find is counted, and at most a few more from metadata (an EXIF thumbnail's).
    Decoding time grows with pixels times scans: 10,000 tiny scans in a 0.7 MB 6000 x 6000 file took 52 s."""
    position = source.tell()
    source.seek(0)
    count, last = 0, b""
    while chunk := source.read(1 << 20):
        count += (last + chunk).count(b"\xff\xda")  # `last`, the previous chunk's last byte: a marker split in two
        last = chunk[-1:]
    source.seek(position)
    return count


REDUCING_GAP = 3  # see load_image's seen_at
EXIF_ORIENTATION = 0x0112
ORIENTATION = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
               5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
               8: Image.Transpose.ROTATE_90}  # EXIF's orientation tag -> the turn that shows the photo upright
SWAPS_SIDES = {Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270, Image.Transpose.TRANSVERSE,
               Image.Transpose.ROTATE_90}


def reduced(image, shortest):
    """An opened image decoded no larger than needed for its shorter side to stay at least `shortest`."""
    factor = min(image.size) // shortest
    if factor < 2:
        return image
    image.draft("RGB", (image.width // factor, image.height // factor))  # JPEG decodes at 1/2, 1/4 or 1/8
    factor = min(image.size) // shortest
    if factor < 2:
        return image
    if image.mode not in ("L", "LA", "RGB", "RGBA", "I", "F"):  # what reduce() takes; others convert first
        wider = {"P": "RGBA", "PA": "RGBA", "1": "L", "I;16": "I", "I;16B": "I", "I;16L": "I"}
        image = image.convert(wider.get(image.mode, "RGB"))
    return image.reduce(factor)


def load_images(paths):
    """Read every path: ([(path, RGB PIL image)] of those that load, [one-line error] of those that do not)."""
    loaded, errors = [], []
    for path in paths:
        try:
            loaded.append((path, load_image(path)))
        except ImageError as e:
            errors.append(str(e))
    return loaded, errors


def squash(image, size, resample="bicubic"):
    """Resize to size x size, aspect ratio not kept: (size, size, 3) uint8, writable."""
    return np.array(image.resize((size, size), {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample]))


def load_image_array(path, size):
    """Read `path` squashed to size x size: what a scratch ViT is trained on."""
    return squash(load_image(path), size)


CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # OpenAI CLIP's normalisation, used for every encoder here
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize(pixels, mean=CLIP_MEAN, std=CLIP_STD):
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) with CLIP's mean and standard deviation (or those given)."""
    mean = torch.tensor(mean, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(std, device=pixels.device).view(1, 3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def image_transform(spec):
    """The evaluation transform a checkpoint was trained with: PIL image -> float (3, S, S).

    spec "squash": resize to S x S (aspect ratio not kept; "resample": bicubic unless it says "bilinear", as
    Hugging Face's ViT processor does), then normalise with the spec's mean and std (CLIP's by default).
    spec "openclip": OpenCLIP's own transform (resize the shorter side, centre crop), rebuilt from its settings.
    """
    if spec["kind"] == "squash":
        size, resample = spec["image_size"], spec.get("resample", "bicubic")
        mean, std = spec.get("mean", CLIP_MEAN), spec.get("std", CLIP_STD)

        def squash_and_normalize(image):
            array = squash(image, size, resample)  # (S, S, 3)
            return normalize(torch.from_numpy(array).permute(2, 0, 1)[None], mean, std)[0]

        return squash_and_normalize
    import open_clip

    return open_clip.image_transform(tuple(spec["size"]), is_train=False, mean=tuple(spec["mean"]),
                                     std=tuple(spec["std"]), resize_mode=spec["resize_mode"],
                                     interpolation=spec["interpolation"])


def input_side(spec):
    """The side in pixels of the square input the preprocessing `spec` gives the model."""
    return spec["image_size"] if spec["kind"] == "squash" else spec["size"][0]


def view_geometry(spec, width, height):
    """How the transform maps the original image onto the model's S x S input:
    returns (S, scale_x, scale_y, offset_x, offset_y) with input = original * scale - offset."""
    S = input_side(spec)
    if spec["kind"] == "squash":
        return S, S / width, S / height, 0.0, 0.0
    scale = S / min(width, height)  # "shortest": the shorter side becomes S, then a centre crop
    return S, scale, scale, (width * scale - S) / 2, (height * scale - S) / 2


def patch_boxes(spec, width, height, grid):
    """Box (x0, y0, x1, y1) of every patch in original-image pixels, row-major: (grid*grid, 4)."""
    S, sx, sy, ox, oy = view_geometry(spec, width, height)
    p = S / grid
    r, c = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    r, c = r.flatten().double(), c.flatten().double()
    return torch.stack([(c * p + ox) / sx, (r * p + oy) / sy, ((c + 1) * p + ox) / sx, ((r + 1) * p + oy) / sy], 1)
