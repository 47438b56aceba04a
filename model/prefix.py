"""ClipCap's mapping network (Mokady et al. 2021): the pooled CLIP embedding becomes P prefix tokens that the
decoder reads before the caption. An MLP (ClipCap's default), or a small transformer whose P learned constants
are read out as the prefix (ClipCap's own, or ours with the decoder's heads and MLP width)."""

import torch
from torch import nn

from model.vit import EncoderBlock


class PrefixMapper(nn.Module):
    """Map the pooled CLIP embedding to P prefix tokens: (B, E) -> (B, P, C)."""

    def __init__(self, config):  # a DecoderConfig (model/decoder.py)
        super().__init__()
        self.kind, P, C = config.prefix_mapper, config.prefix_len, config.width
        if self.kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(config.clip_dim, P * C // 2), nn.Tanh(), nn.Linear(P * C // 2, P * C))
        elif self.kind in ("transformer", "clipcap-transformer"):  # ClipCap's: 8 heads, a ReLU MLP twice as wide
            heads, ratio, gelu = (8, 2.0, "relu") if self.kind == "clipcap-transformer" else (config.heads, 4.0, "exact")
            self.linear = nn.Linear(config.clip_dim, P * C)
            self.constants = nn.Parameter(torch.randn(P, C) * 0.02)  # learned queries, read out as the prefix
            self.blocks = nn.ModuleList(EncoderBlock(C, heads, ratio, fused=config.fused, gelu=gelu)
                                        for _ in range(config.mapper_layers))
        else:
            raise ValueError(f"prefix_mapper must be 'mlp', 'transformer' or 'clipcap-transformer', not {self.kind!r}")
        self.P, self.C = P, C

    def forward(self, clip_embed):
        B = clip_embed.size(0)
        if self.kind == "mlp":
            return self.mlp(clip_embed).view(B, self.P, self.C)  # (B, P, C)
        # the CLIP embedding as P tokens, then P learned constants; the constants' outputs are the prefix
        x = self.linear(clip_embed).view(B, self.P, self.C)  # (B, P, C)
        x = torch.cat([x, self.constants.expand(B, -1, -1)], dim=1)  # (B, 2P, C)
        for block in self.blocks:
            x, _ = block(x)
        return x[:, self.P :]  # (B, P, C)
