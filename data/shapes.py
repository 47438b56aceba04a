"""The built-in dataset: coloured shapes on a plain or textured background, generated from a seed.

Each image holds one or two objects. Captions name every object's size, colour and shape and, for two
objects, where the first is relative to the second; an image with two objects has two reference
captions (either object may come first). Every object's box is kept, for region captions.

    a small red circle to the left of a large blue square
    a large blue square to the right of a small red circle
"""

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {"red": (220, 40, 40), "green": (30, 160, 60), "blue": (40, 80, 230), "yellow": (235, 200, 30),
           "purple": (150, 50, 190)}
SHAPES = ("circle", "square", "triangle")
SIZES = {"small": 0.25, "large": 0.42}  # object side as a fraction of the image side
OPPOSITE = {"to the left of": "to the right of", "to the right of": "to the left of", "above": "below",
            "below": "above"}
SPLIT_SEEDS = {"train": 0, "val": 1, "test": 2}  # each split draws from its own random stream


@dataclass
class ShapeObject:
    colour: str
    shape: str
    size: str
    box: tuple  # (x0, y0, x1, y1) in pixels

    @property
    def phrase(self):
        return f"a {self.size} {self.colour} {self.shape}"


@dataclass
class ShapeScene:
    image: np.ndarray  # (H, W, 3) uint8
    objects: list  # of ShapeObject
    relation: str = None  # where objects[0] is relative to objects[1]: "to the left of" or "above"

    @property
    def captions(self):
        """Reference captions; the first names the objects in reading order (left or top first)."""
        if len(self.objects) == 1:
            return [self.objects[0].phrase]
        a, b = self.objects
        return [f"{a.phrase} {self.relation} {b.phrase}", f"{b.phrase} {OPPOSITE[self.relation]} {a.phrase}"]


def draw_shape(draw, shape, box, colour):
    x0, y0, x1, y1 = box
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=colour)


def background(rng, size):
    """A plain light background, or the same with a texture of random speckles."""
    base = rng.randint(200, 250)
    image = np.full((size, size, 3), base, dtype=np.int16)
    if rng.random() < 0.5:
        noise = np.random.default_rng(rng.getrandbits(32)).integers(-25, 26, (size, size, 1))
        image = image + noise
    return image.clip(0, 255).astype(np.uint8)


def random_object(rng, image_size, region):
    """An object of random attributes whose box lies inside region (x0, y0, x1, y1)."""
    size = rng.choice(list(SIZES))
    side = round(SIZES[size] * image_size)
    x0 = rng.randint(region[0], max(region[0], region[2] - side))
    y0 = rng.randint(region[1], max(region[1], region[3] - side))
    return ShapeObject(rng.choice(list(COLOURS)), rng.choice(SHAPES), size, (x0, y0, x0 + side - 1, y0 + side - 1))


def clearly(relation, a, b):
    """True if the centres are at least twice as far apart along the relation's axis as across it,
    so that, say, "above" is never also a fair description of "to the left of"."""
    (ax, ay), (bx, by) = [((o.box[0] + o.box[2]) / 2, (o.box[1] + o.box[3]) / 2) for o in (a, b)]
    along, across = (abs(ax - bx), abs(ay - by)) if "of" in relation else (abs(ay - by), abs(ax - bx))
    return along >= 2 * across


def make_scene(rng, image_size=64, two_object_fraction=0.75):
    """One scene. Two objects sit in opposite halves, so the relation between them is unambiguous."""
    s, m = image_size, max(1, image_size // 32)  # m: margin from the border
    if rng.random() >= two_object_fraction:
        objects, relation = [random_object(rng, s, (m, m, s - m, s - m))], None
    else:
        relation = rng.choice(list(OPPOSITE))
        first, second = (m, m, s // 2 - 1, s - m), (s // 2 + 1, m, s - m, s - m)  # left, right halves
        if relation in ("above", "below"):
            first, second = (m, m, s - m, s // 2 - 1), (m, s // 2 + 1, s - m, s - m)  # top, bottom halves
        if relation in ("to the right of", "below"):
            first, second = second, first
        while True:
            objects = [random_object(rng, s, first), random_object(rng, s, second)]
            if objects[0].phrase != objects[1].phrase and clearly(relation, *objects):
                break
        if relation in ("to the right of", "below"):  # store in reading order: left or top object first
            objects, relation = objects[::-1], OPPOSITE[relation]
    image = Image.fromarray(background(rng, s))
    draw = ImageDraw.Draw(image)
    for obj in objects:
        draw_shape(draw, obj.shape, obj.box, COLOURS[obj.colour])
    return ShapeScene(np.asarray(image), objects, relation)


def make_split(split, count, image_size=64, seed=0):
    """`count` scenes of split "train", "val" or "test"; the same arguments always give the same scenes."""
    rng = random.Random(f"shapes-{seed}-{SPLIT_SEEDS[split]}")
    return [make_scene(rng, image_size) for _ in range(count)]


def vocabulary_words():
    """Every word a caption can contain."""
    words = {"a", "to", "the", "left", "right", "of", "above", "below"}
    return sorted(words | set(COLOURS) | set(SHAPES) | set(SIZES))
