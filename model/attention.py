"""Scaled dot-product attention, the masks it uses, and one multi-head module for all three uses.

Mask convention, everywhere in this project: a boolean tensor, True means "may attend"
(the same as F.scaled_dot_product_attention). Masks broadcast to (B, H, T, S) and are
combined with `&`.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.hooks import plugged


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D)) v, written out. q: (B, H, T, D), k, v: (B, H, S, D) -> (out, weights)."""
    D = q.size(-1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(D)  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # a masked key gets exp(-inf) = 0
    weights = scores.softmax(dim=-1)  # (B, H, T, S), each row sums to 1 over allowed keys
    out = weights @ v  # (B, H, T, D)
    return out, weights


def causal_mask(T, S=None, device=None):
    """(T, S) mask: query t may attend to key s if s <= t + (S - T), i.e. the queries are the last T of S positions."""
    S = T if S is None else S
    q_pos = torch.arange(S - T, S, device=device)[:, None]  # (T, 1)
    k_pos = torch.arange(S, device=device)[None, :]  # (1, S)
    return k_pos <= q_pos  # (T, S)


def prefix_lm_mask(P, T, device=None):
    """(P + T, P + T) mask of a prefix language model: every position sees the whole prefix, and each
    caption position also sees the caption up to itself (the prefix rows see only the prefix)."""
    mask = causal_mask(P + T, device=device)  # (L, L)
    mask[:, :P] = True  # the prefix is visible to every position
    return mask


def padding_mask(lengths, S):
    """(B, 1, 1, S) mask from per-row lengths: key s is real if s < lengths[b]."""
    k_pos = torch.arange(S, device=lengths.device)  # (S,)
    return (k_pos[None, :] < lengths[:, None])[:, None, None, :]  # (B, 1, 1, S)


def split_heads(x, heads):
    """(B, T, C) -> (B, H, T, D): head h gets channels h*D to (h+1)*D - 1."""
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)  # (B, H, T, D)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, C): the heads' outputs side by side again."""
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)  # (B, T, C)


@dataclass
class AttentionCache:
    """Keys and values kept between decoding steps, (B, H, S, D) each; None until the first step.

    static=False (self-attention): every step writes its keys and values into buffers made once for
    `capacity` positions (`append`), so the past is never copied again; k and v are views of the
    filled part. static=True (cross-attention): computed from the context on the first step, then
    reused (later steps need not pass the context again). A fixed-length variant for torch.compile is
    FixedAttentionCache in model/compiled.py.
    """

    static: bool = False
    capacity: int = 0  # positions the buffers hold; they double when a step would overflow them
    k: torch.Tensor = None
    v: torch.Tensor = None
    buffers: tuple = None  # (keys, values), each (B, H, capacity, D)

    def append(self, k, v):
        """Write this step's keys and values (B, H, T, D) after the earlier ones; returns all (B, H, S + T, D)."""
        S, T = (0 if self.k is None else self.k.size(2)), k.size(2)
        if self.buffers is None or S + T > self.buffers[0].size(2):
            B, H, _, D = k.shape
            size = self.capacity if S + T <= self.capacity else 2 * (S + T)  # exactly capacity while it fits
            grown = tuple(x.new_zeros(B, H, size, D) for x in (k, v))  # zeros: model/compiled.py reads empty slots
            for buffer, old in zip(grown, (self.k, self.v)):
                if S:
                    buffer[:, :, :S] = old
            self.buffers = grown
        keys, values = self.buffers
        keys[:, :, S : S + T] = k  # in place: no copy of the S earlier positions
        values[:, :, S : S + T] = v
        self.k, self.v = keys[:, :, : S + T], values[:, :, : S + T]
        return self.k, self.v

    def reorder(self, index):
        """Keep rows `index` (beam search picks which hypotheses survive)."""
        if self.buffers is not None:
            S = self.k.size(2)
            self.buffers = tuple(x[index] for x in self.buffers)
            self.k, self.v = (x[:, :, :S] for x in self.buffers)
        elif self.k is not None:
            self.k, self.v = self.k[index], self.v[index]


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, Fig. 2): self-attention, or cross-attention given `context`.

    Parameter names follow torch.nn.MultiheadAttention (and so OpenCLIP), so weights copy across unchanged.
    """

    def __init__(self, width, heads, fused=True):
        super().__init__()
        assert width % heads == 0, f"width {width} is not divisible by heads {heads}"
        self.heads = heads
        self.fused = fused  # True: F.scaled_dot_product_attention; False: the explicit attention() above
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))  # rows: W_q, W_k, W_v
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def split_heads(self, x):
        """(B, T, C) -> (B, H, T, D), by split_heads above (or the function plugged in there: model/hooks.py)."""
        return (plugged("split_heads") or split_heads)(x, self.heads)

    def merge_heads(self, x):
        """(B, H, T, D) -> (B, T, C), by merge_heads above (or the function plugged in there)."""
        return (plugged("merge_heads") or merge_heads)(x)

    def forward(self, x, context=None, mask=None, cache=None, return_attn=False):
        """x: (B, T, C) queries; context: (B, S, C) keys/values, or None for self-attention.

        mask broadcasts to (B, H, T, S). With a `cache` (AttentionCache), self-attention appends this
        step's keys and values to the cached ones; cross-attention computes them once and reuses them.
        Returns (out (B, T, C), weights (B, H, T, S) or None).
        """
        C = x.size(-1)
        cross = context is not None or (cache is not None and cache.static)
        if not cross:  # self-attention: one matrix product makes the queries, keys and values
            q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)  # (B, T, C) each
            q, k, v = self.split_heads(q), self.split_heads(k), self.split_heads(v)  # (B, H, T, D)
            if cache is not None:
                k, v = cache.append(k, v)  # (B, H, S_past + T, D): every position so far
        else:  # cross-attention: queries from x, keys and values from the context
            w_q, w_kv = self.in_proj_weight.split([C, 2 * C])
            b_q, b_kv = self.in_proj_bias.split([C, 2 * C])
            q = self.split_heads(F.linear(x, w_q, b_q))  # (B, H, T, D)
            if cache is not None and cache.k is not None:
                k, v = cache.k, cache.v  # the image does not change between steps
            else:
                k, v = F.linear(context, w_kv, b_kv).chunk(2, dim=-1)  # (B, S, C) each
                k, v = self.split_heads(k), self.split_heads(v)  # (B, H, S, D)
                if cache is not None:
                    cache.k, cache.v = k, v
        theirs = plugged("attention")  # a student's attention (model/hooks.py) runs on every path
        if self.fused and not return_attn and theirs is None:
            out, weights = F.scaled_dot_product_attention(q, k, v, attn_mask=mask), None  # (B, H, T, D)
        else:
            out, weights = (theirs or attention)(q, k, v, mask)  # (B, H, T, D), (B, H, T, S)
            weights = weights if return_attn else None
        return self.out_proj(self.merge_heads(out)), weights  # (B, T, C)
