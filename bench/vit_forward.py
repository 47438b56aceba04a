"""Our ViT against OpenCLIP's encode_image, same weights, same inputs: images per second.

    python -m bench.vit_forward [--model ViT-B-32] [--batch 32] [--repeats 3]

Both run in one process on the same batch, alternating; the table gives the median throughput and our
ratio to OpenCLIP's (the bar: at least 0.9).
"""

import argparse
import statistics
import time

import torch

from model.clip import vit_config_from_openclip
from model.vit import VisionTransformer


@torch.no_grad()
def main():
    import open_clip

    p = argparse.ArgumentParser()
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    clip = open_clip.create_model(args.model, pretrained=None).eval()
    ours = VisionTransformer(vit_config_from_openclip(clip.visual)).eval()
    ours.load_openclip_state_dict(clip.visual.state_dict())
    images = torch.randn(args.batch, 3, 224, 224)
    runs = {"OpenCLIP encode_image": lambda: clip.encode_image(images), "ours (fused)": lambda: ours(images)}
    for fn in runs.values():
        fn()  # warm-up
    times = {k: [] for k in runs}
    for _ in range(args.repeats):
        for k, fn in runs.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    reference = statistics.median(times["OpenCLIP encode_image"])
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.repeats}")
    for k in runs:
        t = statistics.median(times[k])
        print(f"{k:24} {args.batch / t:8.1f} images/s   {reference / t:5.2f}x of OpenCLIP")


if __name__ == "__main__":
    main()
