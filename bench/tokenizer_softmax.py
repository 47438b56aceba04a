"""Which tokenizer trains faster? The Flickr30k decoder (6 x 512) with a word vocabulary against OpenCLIP's BPE.

    python -m bench.tokenizer_softmax [--steps 5] [--batch 64]

Caption lengths are those measured on Flickr30k's training captions (word 14.3, BPE 15.7 tokens on
average, start and end included); the image features are random, of ViT-B-32's shape. Both models are
timed in the same process, in alternating runs; the table gives seconds per training step and the ratio.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from model.decoder import CaptionDecoder, DecoderConfig

CASES = {"word (min count 5)": (7440, 14), "bpe (OpenCLIP)": (49408, 16)}  # vocabulary, tokens per caption


def step_time(decoder, optimizer, tokens, clip_embed, patches):
    start = time.perf_counter()
    logits = decoder(tokens, clip_embed, patches).logits
    loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return time.perf_counter() - start


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--batch", type=int, default=64)
    args = p.parse_args()
    torch.manual_seed(0)
    setups = {}
    for name, (vocab, length) in CASES.items():
        decoder = CaptionDecoder(DecoderConfig(vocab_size=vocab, dropout=0.0))
        inputs = (torch.randint(0, vocab, (args.batch, length)), torch.randn(args.batch, 512),
                  torch.randn(args.batch, 49, 768))
        setups[name] = (decoder, torch.optim.AdamW(decoder.parameters(), lr=1e-4), inputs)
        step_time(decoder, setups[name][1], *inputs)  # warm-up
    times = {name: [] for name in setups}
    for _ in range(args.steps):  # alternate, so a slow moment of the machine hits both
        for name, (decoder, optimizer, inputs) in setups.items():
            times[name].append(step_time(decoder, optimizer, *inputs))
    reference = statistics.median(times["word (min count 5)"])
    print(f"decoder 6 x 512, batch {args.batch}, {torch.get_num_threads()} threads, median of {args.steps} steps")
    print(f"{'tokenizer':22} {'vocab':>7} {'s/step':>8} {'vs word':>8} {'params (M)':>11}")
    for name, (decoder, _, _) in setups.items():
        t = statistics.median(times[name])
        params = sum(p.numel() for p in decoder.parameters()) / 1e6
        print(f"{name:22} {decoder.config.vocab_size:7} {t:8.3f} {t / reference:7.2f}x {params:11.1f}")


if __name__ == "__main__":
    main()
