"""Feature extraction on real photos, JPEG decoding and preprocessing included: images per second, peak memory.

    python -m bench.feature_extraction [--images ../shared/data/flickr30k-mini/images] [--count 256]

Runs data/features.extract_features (the code train.py uses) with a random-weight OpenCLIP ViT-B-32,
with 0 DataLoader workers (the reference) and with 2, into fresh temporary caches, in one process.
"""

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

from data.features import extract_features
from model.clip import load_clip_vit


def main():
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "flickr30k-mini" / "images"
    p = argparse.ArgumentParser()
    p.add_argument("--images", default=str(default))
    p.add_argument("--count", type=int, default=256)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    folder = Path(args.images)
    if not folder.is_dir():
        sys.exit(f"{folder}: no such folder (the photos live in ../shared beside the project's checkout)")
    names = sorted(p.name for p in folder.iterdir())[: args.count]
    torch.manual_seed(0)
    vit, preprocess = load_clip_vit("ViT-B-32", None)
    results = {}
    for workers in (0, 2):
        with tempfile.TemporaryDirectory() as cache:
            start = time.perf_counter()
            extract_features(vit, preprocess, "ViT-B-32", folder, names, cache, batch_size=args.batch,
                             num_workers=workers)
            results[workers] = len(names) / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux -> MiB
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(f"ViT-B-32 (random weights), {len(names)} photos, batch {args.batch}, {torch.get_num_threads()} threads")
    for workers, rate in results.items():
        print(f"workers {workers}: {rate:6.1f} images/s   {rate / results[0]:5.2f}x of 0 workers")
    print(f"peak memory: main process {peak:.0f} MiB, largest worker {children:.0f} MiB")


if __name__ == "__main__":
    main()
