"""A training run's data: each split a list of images (rows of an image source) with their reference captions."""

import os

import torch

from data.captions import check_images, read_captions
from data.sources import (
    CachedFeatureSource,
    caption_splits,
    load_image_rows,
    load_shapes,
)


def load_data(config, device, rank=0, world=1, encoder=None):
    """(splits, source, frozen_vit): the built-in shapes or a caption file; frozen_vit is the CLIP encoder
    the cached features came from (kept in the checkpoint), or None for a scratch ViT. rank of world
    processes: the feature extraction is split between them. encoder: a resumed run's CLIP weights (its
    checkpoint's), used instead of loading them, so --resume never downloads."""
    if config.data == "shapes":
        counts = {"train": config.shapes_train, "val": config.shapes_val, "test": config.shapes_test}
        for split, name in (("train", "training"), ("val", "validation")):
            if counts[split] < 1:
                raise SystemExit(f"error: --shapes-{split} {counts[split]}: the {name} split is empty; it needs "
                                 "at least one scene")
        splits, source = load_shapes(counts, config.vit.image_size, config.seed, config.train_on_all_references)
        return splits, source, None
    captions = read_captions(config.data, seed=config.seed)
    dropped = check_images(captions, config.images, config.skip_missing)
    if dropped:
        print(f"skipping {dropped} captioned images missing from {config.images}")
    names = sorted(captions.captions)
    frozen_vit = None
    if config.encoder == "clip":
        from data.features import extract_features
        from model.clip import load_clip_vit

        pretrained = None if config.clip_pretrained == "none" or encoder else config.clip_pretrained
        frozen_vit, preprocess = load_clip_vit(config.clip_model, pretrained)
        if encoder:
            frozen_vit.load_state_dict(encoder)
        # On a CPU the encoder's threads already use every core: loader workers only compete with them
        # (bench/feature_extraction.py: 2 workers ran at 0.88x of none on 2 cores). On a GPU they feed it.
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
        cache = extract_features(frozen_vit.to(device), preprocess, config.clip_model, config.images, names,
                                 config.feature_cache, num_workers=workers, device=device, share=(rank, world),
                                 wait_for_all=torch.distributed.barrier if world > 1 else lambda: None)
        frozen_vit.cpu()
        source, row_of = CachedFeatureSource(cache), {n: cache.index[n] for n in cache.usable()}
    else:
        source, row_of = load_image_rows(config.images, names, config.vit.image_size)
    splits = caption_splits(captions, row_of)
    if not len(splits["train"].rows):
        raise SystemExit(f"{config.data}: no training images left")
    return splits, source, frozen_vit
