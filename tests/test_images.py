"""Odd and broken images: each loads correctly as RGB, or is refused with its name and the reason."""

import io

import numpy as np
import pytest
from PIL import Image

from data.images import ImageError, load_image, load_image_array


def save(image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_cmyk_jpeg_becomes_rgb(tmp_path):
    path = save(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), tmp_path / "cmyk.jpg")  # red in CMYK
    image = load_image(path)
    assert image.mode == "RGB"
    r, g, b = np.asarray(image)[4, 4]
    assert r > 200 and g < 60 and b < 60


def test_16_bit_grayscale_is_scaled_not_clipped(tmp_path):
    values = np.full((8, 8), 32768, dtype=np.uint16)  # half of 16-bit white
    path = save(Image.fromarray(values), tmp_path / "gray16.png")
    assert Image.open(path).mode.startswith("I")
    pixel = np.asarray(load_image(path))[0, 0]
    assert abs(int(pixel[0]) - 128) <= 1 and pixel[0] == pixel[1] == pixel[2]


def test_palette_image_and_palette_transparency(tmp_path):
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)  # index 1 is green
    assert tuple(np.asarray(load_image(save(palette, tmp_path / "p.png")))[0, 0]) == (0, 255, 0)
    path = save(palette, tmp_path / "pt.png", transparency=1)  # green is the transparent index
    assert tuple(np.asarray(load_image(path))[0, 0]) == (255, 255, 255)


def test_alpha_is_laid_on_white(tmp_path):
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))  # fully transparent red
    rgba.putpixel((0, 0), (0, 0, 255, 255))  # one opaque blue pixel
    image = np.asarray(load_image(save(rgba, tmp_path / "a.png")))
    assert tuple(image[1, 1]) == (255, 255, 255) and tuple(image[0, 0]) == (0, 0, 255)


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (20, 10), (255, 0, 0))  # wide
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    path = save(image, tmp_path / "rotated.jpg", exif=exif)
    assert Image.open(path).size == (20, 10)
    assert load_image(path).size == (10, 20)  # tall, as a viewer shows it


def test_large_jpeg_loads_and_oversized_is_refused(tmp_path):
    path = save(Image.new("RGB", (6000, 4000), (10, 200, 10)), tmp_path / "big.jpg", quality=50)
    array = load_image_array(path, 32)
    assert array.shape == (32, 32, 3) and abs(int(array[16, 16, 1]) - 200) < 8
    with pytest.raises(ImageError, match=r"big.jpg: 6000x4000 pixels is more than"):
        load_image(path, max_pixels=1_000_000)


@pytest.mark.parametrize("name, content, reason", [
    ("empty.jpg", b"", "not an image file"),
    ("notes.jpg", b"these are words, not pixels", "not an image file"),
])
def test_non_images_are_refused_by_name(tmp_path, name, content, reason):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert str(error.value).startswith(str(path)) and reason in str(error.value)


def test_truncated_jpeg_is_refused_by_name(tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG")
    path = tmp_path / "truncated.jpg"
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    with pytest.raises(ImageError, match=r"truncated.jpg: damaged or truncated image"):
        load_image(path)


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageError, match=r"nope.jpg: no such file"):
        load_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageError, match=r"is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("kind, mode", [("jpg", "RGB"), ("png", "RGB"), ("png", "P"), ("png", "I;16")])
def test_reduced_decoding_shows_the_same_picture(tmp_path, orientation, kind, mode):
    """load_image(seen_at=S) (the server's bounded decode) gives the full decode's picture, turned the same way
    by EXIF, at a smaller size no shorter than 3 S, with original_size the full picture's upright size."""
    rng = np.random.default_rng(orientation)
    blocks = rng.integers(0, 256, (6, 9, 3), dtype=np.uint8).repeat(120, 0).repeat(120, 1)  # 720 x 1080, coarse
    image = Image.fromarray(blocks)
    image = {"RGB": image, "P": image.quantize(64), "I;16": image.convert("L")}[mode]
    if mode == "I;16":
        image = Image.fromarray(np.asarray(image).astype(np.uint16) * 257)
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = save(image, tmp_path / f"photo.{kind}", exif=exif, **({"quality": 95} if kind == "jpg" else {}))
    full = load_image(path)
    small = load_image(path, seen_at=64)
    assert small.original_size == full.size and min(small.size) >= 3 * 64 and min(small.size) < min(full.size)
    same_size = np.asarray(full.resize((90, 60) if full.width > full.height else (60, 90), Image.BOX), dtype=float)
    assert np.abs(np.asarray(small.resize(same_size.shape[1::-1], Image.BOX), dtype=float) - same_size).mean() < 3


def progressive_jpeg(size, extra_scans=0):
    """A flat grey progressive JPEG of `size` (PIL writes 10 scans), with the last scan and its Huffman tables
    repeated `extra_scans` times before the end: each repeat is 36 bytes, and each makes the decoder walk
    every block of the picture once more (issue 34, point 1)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, (120, 130, 140)).save(buffer, "JPEG", progressive=True, quality=90)
    jpeg = buffer.getvalue()
    last_scan = jpeg.rindex(b"\xff\xda")  # SOS
    tables = jpeg.rindex(b"\xff\xc4", 0, last_scan)  # the DHT the last scan decodes with
    end = jpeg.rindex(b"\xff\xd9")  # EOI
    return jpeg[:end] + jpeg[tables:end] * extra_scans + jpeg[end:]


def test_a_jpeg_of_a_thousand_scans_is_refused_before_it_is_decoded(tmp_path):
    """A 2000 x 2000 progressive JPEG of 1,010 scans is 60 kB and took 2.4 s to decode (10,000 scans in a
    6000 x 6000 one: 52 s). The scans are counted before decoding; more than MAX_SCANS is refused in one
    line. A progressive JPEG as cameras and PIL write it (10 scans) still loads."""
    import time

    from data.images import MAX_SCANS

    path = tmp_path / "scans.jpg"
    path.write_bytes(progressive_jpeg((2000, 2000), extra_scans=1000))
    started = time.perf_counter()
    with pytest.raises(ImageError) as error:
        load_image(path)
    assert time.perf_counter() - started < 0.5
    assert str(error.value) == f"{path}: a JPEG of 1,010 scans, where this loader decodes at most {MAX_SCANS} " \
                               "(a progressive photo has about 10)"
    with pytest.raises(ImageError):  # the server's way: an upload in memory, decoded at a reduced scale
        load_image(io.BytesIO(path.read_bytes()), name="scans.jpg", seen_at=224)
    fine = tmp_path / "fine.jpg"
    fine.write_bytes(progressive_jpeg((2000, 2000), extra_scans=MAX_SCANS - 10))
    assert load_image(fine).size == (2000, 2000)
