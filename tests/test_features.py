"""The feature cache: keyed by encoder, weights and preprocessing; resumable; skips corrupt images."""

import numpy as np
import pytest
import torch
from PIL import Image
from torch.testing import assert_close

from data import features
from data.features import FAILED, cache_key, extract_features, weights_digest
from data.images import load_image
from model.vit import ViTConfig, VisionTransformer


def preprocess(image):
    return torch.from_numpy(np.asarray(image.resize((16, 16)), dtype=np.float32) / 255).permute(2, 0, 1)


def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return VisionTransformer(ViTConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2, output_dim=8)).eval()


@pytest.fixture
def folder(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(images / f"{i}.png")
    (images / "5.png").write_bytes(b"broken")  # a corrupt image among them
    return images


def test_key_changes_with_name_weights_and_preprocessing():
    a, b = tiny_vit(0), tiny_vit(1)
    assert weights_digest(a) == weights_digest(tiny_vit(0)) != weights_digest(b)
    base = cache_key("vit", weights_digest(a), "resize 16")
    assert base == cache_key("vit", weights_digest(a), "resize 16")
    assert len({base, cache_key("vit2", weights_digest(a), "resize 16"), cache_key("vit", weights_digest(b), "resize 16"),
                cache_key("vit", weights_digest(a), "resize 32")}) == 4


def test_features_equal_the_encoder_and_corrupt_images_are_skipped(folder, tmp_path, capsys):
    vit = tiny_vit()
    names = [f"{i}.png" for i in range(10)]
    cache = extract_features(vit, preprocess, "tiny", folder, names, tmp_path / "cache", batch_size=3, num_workers=0)
    assert "5.png: not an image file" in capsys.readouterr().out
    assert cache.status[cache.index["5.png"]] == FAILED and len(cache.usable()) == 9
    rows = [cache.index["7.png"], cache.index["2.png"]]
    pooled, patches = cache.get(rows)
    with torch.no_grad():
        expected = vit(torch.stack([preprocess(load_image(folder / n)) for n in ["7.png", "2.png"]]))
    assert_close(pooled, expected.pooled, atol=2e-3, rtol=2e-3)  # stored in fp16
    assert_close(patches, expected.patches, atol=2e-3, rtol=2e-3)
    assert cache.pooled.dtype == np.float16 and isinstance(cache.patches, np.memmap)


def test_a_changed_encoder_gets_a_new_cache(folder, tmp_path):
    names = ["0.png", "1.png"]
    a = extract_features(tiny_vit(0), preprocess, "tiny", folder, names, tmp_path / "c", num_workers=0)
    b = extract_features(tiny_vit(1), preprocess, "tiny", folder, names, tmp_path / "c", num_workers=0)
    assert a.folder != b.folder
    assert not np.array_equal(np.asarray(a.pooled), np.asarray(b.pooled))


def test_extraction_resumes_after_an_interruption(folder, tmp_path, monkeypatch):
    vit, names = tiny_vit(), [f"{i}.png" for i in range(10)]
    calls = {"n": 0}
    real_encoder_forward = vit.forward

    def crash_on_third_batch(images, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:  # the first call is the shape probe; batches 1 and 2 complete, then a crash
            raise KeyboardInterrupt
        return real_encoder_forward(images, *args, **kwargs)

    monkeypatch.setattr(vit, "forward", crash_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        extract_features(vit, preprocess, "tiny", folder, names, tmp_path / "c", batch_size=3, num_workers=0)
    monkeypatch.undo()
    partial = features.FeatureCache(next((tmp_path / "c").iterdir()))
    done_before = int((np.asarray(partial.status) == features.DONE).sum())
    assert 0 < done_before < 9
    seen = []
    monkeypatch.setattr(vit, "forward", lambda images, *a, **k: seen.append(len(images)) or real_encoder_forward(images))
    cache = extract_features(vit, preprocess, "tiny", folder, names, tmp_path / "c", batch_size=3, num_workers=0)
    assert sum(seen) == 9 - done_before  # only the images not yet done are encoded again
    fresh = extract_features(vit, preprocess, "tiny", folder, names, tmp_path / "fresh", num_workers=0)
    assert np.array_equal(np.asarray(cache.pooled), np.asarray(fresh.pooled))


def test_processes_split_the_extraction_and_end_with_one_cache(folder, tmp_path):
    """Two workers, as torchrun's processes would be (here threads, with a barrier between them), each
    compute their part of the rows into the same files: the cache equals one process's, every image
    encoded once, and a second pass finds nothing left to do."""
    import threading

    vit, names = tiny_vit(), [f"{i}.png" for i in range(10)]
    encoded, barrier, caches = [], threading.Barrier(2), [None, None]
    real_forward = vit.forward
    vit.forward = lambda images, *a, **k: encoded.append(len(images)) or real_forward(images, *a, **k)

    def process(rank):
        caches[rank] = extract_features(vit, preprocess, "tiny", folder, names, tmp_path / "shared", batch_size=2,
                                        num_workers=0, share=(rank, 2), wait_for_all=barrier.wait)

    workers = [threading.Thread(target=process, args=(rank,)) for rank in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert sum(encoded) == 1 + 9  # the shape probe, then each readable image once
    fresh = extract_features(tiny_vit(), preprocess, "tiny", folder, names, tmp_path / "one", num_workers=0)
    for cache in caches:
        assert np.array_equal(np.asarray(cache.status), np.asarray(fresh.status))
        # The two processes encode other batch partitions than one process does: on some CPUs (AVX-512) the
        # matrix kernels then add in another order, so the float32 features differ in their last bits, and
        # the cache's float16 copy of a value next to a rounding boundary lands one float16 step (2**-10 of
        # the value) away. The tolerance is that one step; a wrong row or a lost image is far outside it.
        for mine, theirs in ((cache.pooled, fresh.pooled), (cache.patches, fresh.patches)):
            assert np.asarray(mine).dtype == np.float16
            np.testing.assert_allclose(np.asarray(mine, np.float32), np.asarray(theirs, np.float32), rtol=2**-10,
                                       atol=2**-14)
    encoded.clear()
    extract_features(vit, preprocess, "tiny", folder, names, tmp_path / "shared", num_workers=0, share=(1, 2))
    assert encoded == []
