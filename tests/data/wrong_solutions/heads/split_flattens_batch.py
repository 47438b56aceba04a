# mistake: split_heads flattens batch and time into one token axis, moves heads in front of it and reshapes back to (B, H, T, D), which mixes the images of the batch: right for a batch of 1 only.
"""Exercise 3: splitting a width-C vector into H heads of width D = C / H, and merging them back.

Multi-head attention runs H attentions side by side, each on its own D channels of every token. The
work is all in the shapes: (B, T, C) -> (B, H, T, D) before attention and back after it.

Check yourself:  python -m exercises check heads
The project's own answers are MultiHeadAttention.split_heads and merge_heads in model/attention.py.
"""

import torch


def split_heads(x, heads):
    """(B, T, C) -> (B, H, T, D) with H = heads and D = C // heads: head h gets channels h*D .. (h+1)*D - 1.

    Hints:
    1. First x.view(B, T, H, D): each token's channels cut into H groups of D neighbours.
    2. Then .transpose(1, 2): heads before tokens. A plain x.view(B, H, T, D) would not do this: it cuts
       the flat memory in the wrong places and mixes tokens into heads.
    """
    B, T, C = x.shape
    D = C // heads
    x = x.reshape(B * T, heads, D)  # every token, cut into heads
    return x.transpose(0, 1).reshape(B, heads, T, D)


def merge_heads(x):
    """(B, H, T, D) -> (B, T, H * D): the inverse of split_heads.

    Hints:
    1. .transpose(1, 2) back to (B, T, H, D), then .reshape(B, T, H * D) (reshape, not view: after a
       transpose the memory is no longer laid out in order).
    """
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)
