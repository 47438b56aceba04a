"""Captions per second: greedy and beam 3, batch 1 and 32, with the KV cache and without.

    python -m bench.generation_speed [--checkpoint runs/shapes/model] [--repeats 3]

Two models: the trained built-in captioner (if its checkpoint exists), and a Flickr30k-sized decoder
(6 x 512, 7,440 words, ViT-B-32-shaped features) with random weights. Every caption is forced to 20
tokens (the end token is never accepted), so all rows do the same work. Image encoding is excluded:
this measures decoding. Runs alternate between the settings; the median is reported.
"""

import argparse
import os
import statistics
import time

import torch

from model.checkpoint import load_model
from model.decoder import CaptionDecoder, DecoderConfig
from model.sampling import beam_search, sample

NEVER = -1  # an end-token id no row can produce: every caption runs to max_new_tokens


def decoders(checkpoint):
    found = []
    if checkpoint and os.path.exists(checkpoint):
        model, _ = load_model(checkpoint)
        d = model.decoder.config
        feats = (d.clip_dim, model.encoder.config.num_patches, d.patch_dim)
        found.append(("built-in (2 x 128)", model.decoder, feats, 15))
    torch.manual_seed(0)
    flickr = CaptionDecoder(DecoderConfig(vocab_size=7440, dropout=0.0)).eval()
    found.append(("flickr30k (6 x 512)", flickr, (512, 49, 768), 20))
    return found


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--checkpoint", default="runs/shapes/model")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    print(f"{torch.get_num_threads()} threads; decoding only; median of {args.repeats}")
    print(f"{'decoder':20} {'tokens':>6} {'method':24} {'batch':>5} {'captions/s':>11} {'vs no cache':>12}")
    for name, decoder, (E, N, C), tokens in decoders(args.checkpoint):
        for batch in (1, 32):
            clip_embed, patches = torch.randn(batch, E), torch.randn(batch, N, C)
            common = dict(bos_id=1, eos_id=NEVER, max_new_tokens=tokens)
            runs = {
                "greedy, no cache": lambda: sample(decoder, clip_embed, patches, use_cache=False, **common),
                "greedy, KV cache": lambda: sample(decoder, clip_embed, patches, **common),
                "beam 3, KV cache": lambda: beam_search(decoder, clip_embed, patches, beam_size=3, **common),
            }
            times = {k: [] for k in runs}
            for _ in range(args.repeats):
                for k, fn in runs.items():
                    times[k].append(timed(fn))
            base = statistics.median(times["greedy, no cache"])
            for k in runs:
                t = statistics.median(times[k])
                print(f"{name:20} {tokens:6} {k:24} {batch:5} {batch / t:11.1f} {base / t:11.2f}x")


if __name__ == "__main__":
    main()
