"""The built-in dataset is reproducible, and its captions and boxes describe the pixels."""

import numpy as np

from data.shapes import COLOURS, OPPOSITE, make_split, vocabulary_words


def test_same_seed_same_scenes_and_splits_differ():
    a, b = make_split("train", 20), make_split("train", 20)
    assert all(np.array_equal(x.image, y.image) and x.captions == y.captions for x, y in zip(a, b))
    test = make_split("test", 20)
    assert not any(np.array_equal(x.image, y.image) for x, y in zip(a, test))
    assert make_split("train", 20, seed=1)[0].captions != a[0].captions or not np.array_equal(
        make_split("train", 20, seed=1)[0].image, a[0].image)


def test_captions_boxes_and_pixels_agree():
    scenes = make_split("val", 300, image_size=32)
    counts = {1: 0, 2: 0}
    for scene in scenes:
        counts[len(scene.objects)] += 1
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.box
            assert 0 <= x0 < x1 < 32 and 0 <= y0 < y1 < 32
            centre = scene.image[(y0 + y1) // 2 + 1, (x0 + x1) // 2]  # just below the middle: inside a triangle too
            assert tuple(centre) == COLOURS[obj.colour]
        words = set(" ".join(scene.captions).split())
        assert words <= set(vocabulary_words())
        if len(scene.objects) == 2:
            a, b = scene.objects
            assert scene.relation in ("to the left of", "above")  # reading order: left or top object first
            assert scene.captions == [f"{a.phrase} {scene.relation} {b.phrase}",
                                      f"{b.phrase} {OPPOSITE[scene.relation]} {a.phrase}"]
            if scene.relation == "above":
                assert a.box[3] < b.box[1]
            else:
                assert a.box[2] < b.box[0]
    assert counts[1] > 30 and counts[2] > 150
