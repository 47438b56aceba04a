"""Decoder training step (forward + backward + AdamW): ours, fused and explicit, against nn.TransformerDecoder.

    python -m bench.decoder_step [--batch 64] [--tokens 32] [--repeats 3]

The reference is the same captioner (embeddings, ClipCap prefix, patch projection, tied head, same
sizes: 6 x 512 x 8) whose blocks are torch.nn.TransformerDecoderLayer(norm_first=True) instead of ours,
with the same prefix mask. All three run in one process on the same inputs, alternating.
"""

import argparse
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

from model.attention import prefix_lm_mask
from model.decoder import CaptionDecoder, DecoderConfig


class TorchBlocksDecoder(CaptionDecoder):
    """Our decoder with torch.nn.TransformerDecoder blocks: the reference of equal size."""

    def __init__(self, config):
        super().__init__(config)
        layer = nn.TransformerDecoderLayer(config.width, config.heads, int(config.width * config.mlp_ratio),
                                           dropout=0.0, activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerDecoder(layer, config.layers)

    def forward(self, tokens, clip_embed, patches):
        P, T = self.config.prefix_len, tokens.size(1)
        x = self.token_embedding(tokens) + self.positional_embedding[:T]
        x = torch.cat([self.prefix(clip_embed), x], dim=1)  # (B, L, C)
        mask = prefix_lm_mask(P, T)
        x = self.blocks(x, self.patch_proj(patches), tgt_mask=~mask)  # torch: True = blocked
        return self.ln_f(x[:, P:]) @ self.token_embedding.weight.T


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    config = dict(vocab_size=7440, max_len=40, dropout=0.0)
    models = {
        "nn.TransformerDecoder": TorchBlocksDecoder(DecoderConfig(**config)),
        "ours, fused (SDPA)": CaptionDecoder(DecoderConfig(**config, fused=True)),
        "ours, explicit": CaptionDecoder(DecoderConfig(**config, fused=False)),
    }
    tokens = torch.randint(0, 7440, (args.batch, args.tokens))
    clip_embed, patches = torch.randn(args.batch, 512), torch.randn(args.batch, 49, 768)
    optimizers = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in models.items()}

    def step(name):
        out = models[name](tokens, clip_embed, patches)
        logits = out if torch.is_tensor(out) else out.logits
        loss = F.cross_entropy(logits.flatten(0, 1), tokens.flatten())
        optimizers[name].zero_grad()
        loss.backward()
        optimizers[name].step()

    for name in models:
        step(name)  # warm-up
    times = {k: [] for k in models}
    for _ in range(args.repeats):
        for name in models:
            start = time.perf_counter()
            step(name)
            times[name].append(time.perf_counter() - start)
    reference = statistics.median(times["nn.TransformerDecoder"])
    sizes = {k: sum(p.numel() for p in m.parameters()) / 1e6 for k, m in models.items()}
    print(f"6 x 512, batch {args.batch}, {args.tokens} caption tokens, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for name in models:
        t = statistics.median(times[name])
        print(f"{name:24} {t:7.3f} s/step  {args.batch / t:7.1f} captions/s  {reference / t:5.2f}x  "
              f"({sizes[name]:.1f} M params)")


if __name__ == "__main__":
    main()
