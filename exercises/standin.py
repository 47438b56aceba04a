"""Stand-ins for the decoder block's parts in a student pack, which holds no model/ (exercises/pack.py).

The block exercise hands the student a block whose parts they call: block.ln_1, block.self_attn, ...
In the full project those are the model's own modules; in a pack they are these, built from torch's own
layers so that no answer to another exercise is shipped. The attention stand-in gives the model's
MultiHeadAttention's results (the pack's test compares them) without writing out attention, the masks
or the head split: its projection weights are stored already cut per head, (H, C, D), so one einsum
makes (B, H, T, D) directly, and torch's scaled_dot_product_attention does the rest. Its weights, when
asked for, come from the same function given the identity as values (each query's weights, row by row).
"""

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn


class StandInCache:
    """The keys and values an attention layer keeps between decoding steps, (B, H, S, D) each (None until
    the first step). static: cross-attention, computed once from the image and reused."""

    def __init__(self, static=False, k=None, v=None):
        self.static, self.k, self.v = static, k, v


class StandInAttention(nn.Module):
    """attn(x, context=None, mask=None, cache=None, return_attn=False) -> (out (B, T, C), weights or None),
    called as the model's MultiHeadAttention is. Parameters: w (3, H, C, D) and b (3, H, 1, D) for the
    queries, keys and values; w_out (H, D, C) and b_out (C,)."""

    def __init__(self, w, b, w_out, b_out):
        super().__init__()
        self.w, self.b = nn.Parameter(w), nn.Parameter(b)
        self.w_out, self.b_out = nn.Parameter(w_out), nn.Parameter(b_out)

    def project(self, x, which):
        """(B, T, C) -> (B, H, T, D): the queries (0), keys (1) or values (2), every head at once."""
        return torch.einsum("btc,hcd->bhtd", x, self.w[which]) + self.b[which]

    def forward(self, x, context=None, mask=None, cache=None, return_attn=False):
        cross = context is not None or (cache is not None and cache.static)
        q = self.project(x, 0)
        if cross and cache is not None and cache.k is not None:
            k, v = cache.k, cache.v
        else:
            source = context if cross else x
            k, v = self.project(source, 1), self.project(source, 2)
            if cache is not None and not cross and cache.k is not None:
                k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
            if cache is not None:
                cache.k, cache.v = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)  # (B, H, T, D)
        weights = None
        if return_attn:
            S = k.size(2)
            identity = torch.eye(S, dtype=q.dtype, device=q.device).expand(*k.shape[:2], S, S)
            weights = F.scaled_dot_product_attention(q, k, identity, attn_mask=mask)  # (B, H, T, S)
        return torch.einsum("bhtd,hdc->btc", out, self.w_out) + self.b_out, weights


class StandInBlock(nn.Module):
    """A decoder block's parts, named as the model's DecoderBlock names them."""

    def __init__(self, width, hidden, gelu, dropout):
        super().__init__()
        self.ln_1, self.ln_2, self.ln_3 = nn.LayerNorm(width), nn.LayerNorm(width), nn.LayerNorm(width)
        self.self_attn = self.cross_attn = None  # set by from_parameters
        activation = nn.GELU(approximate="tanh" if gelu == "tanh" else "none")
        self.mlp = nn.Sequential(OrderedDict(c_fc=nn.Linear(width, hidden), gelu=activation,
                                             c_proj=nn.Linear(hidden, width)))
        self.dropout = nn.Dropout(dropout)

    @classmethod
    def from_parameters(cls, settings, tensors):
        """settings: width, hidden, gelu, dropout, training, cross; tensors: name -> tensor, as
        exercises/pack.py writes them."""
        block = cls(settings["width"], settings["hidden"], settings["gelu"], settings["dropout"])
        for name in ("ln_1", "ln_2", "ln_3"):
            getattr(block, name).weight.data, getattr(block, name).bias.data = tensors[f"{name}.weight"], tensors[f"{name}.bias"]
        for name in ("c_fc", "c_proj"):
            layer = getattr(block.mlp, name)
            layer.weight.data, layer.bias.data = tensors[f"mlp.{name}.weight"], tensors[f"mlp.{name}.bias"]
        block.self_attn = StandInAttention(*(tensors[f"self_attn.{p}"] for p in ("w", "b", "w_out", "b_out")))
        if settings["cross"]:
            block.cross_attn = StandInAttention(*(tensors[f"cross_attn.{p}"] for p in ("w", "b", "w_out", "b_out")))
        else:
            block.ln_2 = None
        return block.train(settings["training"])
