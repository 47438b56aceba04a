"""Where one cached decoding step of the 6 x 512 decoder spends its time, at batch 1.

    python -m bench.decoding_profile [--steps 200]

A cached step feeds one new token through the decoder. Three things are timed in one process, in
alternating runs, median per step:

- reference: the bare matrix-vector products of that step (F.linear on the same weight matrices:
  self-attention q/k/v and output, cross-attention q and output, the MLP's two layers, the tied head).
  Each step has to read all of these weights from memory once, so this is the floor for any eager
  implementation; bytes / time is the memory bandwidth the machine gives.
- ours: CaptionDecoder with a KV cache (what sample() runs), fused attention.
- ours, compiled: the same decoder in model/compiled.py's CompiledDecoder: a fixed-length cache (every slot attended, the
  empty ones masked, so the shapes never change), the step through torch.compile (Inductor), the
  written-out attention fused by Inductor. The compile happens in untimed warm-up steps; `--cold` first
  points Inductor at an empty cache folder.
- ours at width 32: the same 6 layers and the same operations with almost no arithmetic, i.e. what
  launching those operations costs on its own.

Then torch.profiler's table of the step's operations.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from model.compiled import CompiledDecoder
from model.decoder import CaptionDecoder, DecoderConfig

VOCAB, PATCHES = 7440, (49, 768)  # the word vocabulary of Flickr30k, ViT-B-32 patch tokens


def step_weights(decoder):
    """The (weight, bias) pairs one cached step multiplies by: cross-attention's keys and values are cached."""
    C, pairs = decoder.config.width, []
    for block in decoder.blocks:
        pairs += [(block.self_attn.in_proj_weight, block.self_attn.in_proj_bias),
                  (block.self_attn.out_proj.weight, block.self_attn.out_proj.bias),
                  (block.cross_attn.in_proj_weight[:C], block.cross_attn.in_proj_bias[:C]),
                  (block.cross_attn.out_proj.weight, block.cross_attn.out_proj.bias),
                  (block.mlp.c_fc.weight, block.mlp.c_fc.bias),
                  (block.mlp.c_proj.weight, block.mlp.c_proj.bias)]
    return pairs + [(decoder.token_embedding.weight, None)]


class CachedSteps:
    """Call it to time one cached step; it starts a fresh caption when max_len is reached."""

    def __init__(self, decoder):
        self.decoder, self.cache = decoder, None
        self.token = torch.ones(1, 1, dtype=torch.long)
        self.clip_embed, self.patches = torch.randn(1, decoder.config.clip_dim), torch.randn(1, *PATCHES)

    def __call__(self):
        c = self.decoder.config
        if self.cache is None or self.cache.length - c.prefix_len >= c.max_len - 1:
            self.cache = self.decoder.new_cache()  # the first call (prefix + start token) is not timed
            self.decoder(self.token, self.clip_embed, self.patches, cache=self.cache)
        start = time.perf_counter()
        self.decoder(self.token, self.clip_embed, self.patches, cache=self.cache)
        return time.perf_counter() - start


@torch.no_grad()
def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--cold", action="store_true", help="compile from an empty Inductor cache (a new temporary folder)")
    args = p.parse_args()
    if args.cold:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor-")
    torch.manual_seed(0)
    big = CaptionDecoder(DecoderConfig(vocab_size=VOCAB, dropout=0.0)).eval()
    twin = CaptionDecoder(big.config).eval()  # CompiledDecoder switches its decoder to the written-out attention
    twin.load_state_dict(big.state_dict())
    compiled = CompiledDecoder(twin)
    small = CaptionDecoder(DecoderConfig(vocab_size=VOCAB, width=32, dropout=0.0)).eval()
    pairs = step_weights(big)
    inputs = [torch.randn(1, 1, w.size(1)) for w, _ in pairs]
    weight_bytes = sum(w.numel() * w.element_size() for w, _ in pairs)

    def bare():
        start = time.perf_counter()
        for (w, b), x in zip(pairs, inputs):
            F.linear(x, w, b)
        return time.perf_counter() - start

    runs = {"bare matrix-vector products (reference)": bare,
            "ours, 6 x 512, KV cache": CachedSteps(big),
            "ours, 6 x 512, fixed cache, compiled": CachedSteps(compiled),
            "ours, 6 x 32, KV cache (operations only)": CachedSteps(small)}
    started = time.perf_counter()
    for _ in range(3):  # warm-up; the compiled step is built here
        runs["ours, 6 x 512, fixed cache, compiled"]()
    print(f"compiling the step and 3 warm-up steps: {time.perf_counter() - started:.1f} s"
          f"{' (cold Inductor cache)' if args.cold else ''}")
    times = {k: [] for k in runs}
    for _ in range(args.steps):
        for k, fn in runs.items():
            times[k].append(fn())
    base = statistics.median(times["bare matrix-vector products (reference)"])
    print(f"batch 1, {torch.get_num_threads()} threads, median of {args.steps} steps; "
          f"a step reads {weight_bytes / 1e6:.0f} MB of weights in {len(pairs)} matrix-vector products")
    print(f"{'':42} {'ms/step':>8} {'vs reference':>13}")
    for k in runs:
        t = statistics.median(times[k])
        print(f"{k:42} {t * 1e3:8.2f} {t / base:12.2f}x")
    print(f"memory bandwidth the reference reaches: {weight_bytes / base / 1e9:.1f} GB/s")

    step = CachedSteps(big)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(20):
            step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10))


if __name__ == "__main__":
    main()
