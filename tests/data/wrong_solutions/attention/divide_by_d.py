# mistake: The scores are divided by D, the head width, instead of by sqrt(D).
"""Exercise 1: scaled dot-product attention (Vaswani et al. 2017, section 3.2.1).

Each query asks "which keys are like me?": its dot product with every key is a score, the softmax of
the scores is how much of each value it takes. Everything else in a transformer is built on this.

Check yourself:  python -m exercises check attention
The project's own answer is `attention` in model/attention.py: read it after you pass, not before.
"""

import math

import torch


def attention(q, k, v, mask=None):
    """softmax(q k^T / sqrt(D)) v.

    q: (B, H, T, D) queries; k, v: (B, H, S, D) keys and values (S may differ from T: cross-attention).
    mask: None, or a boolean tensor that broadcasts to (B, H, T, S): True means "may attend".
    Returns (out, weights): out (B, H, T, D), weights (B, H, T, S); each row of weights sums to 1,
    with exactly 0 on masked keys.

    Hints:
    1. scores = q @ k.transpose(-2, -1) has shape (B, H, T, S). Divide it by math.sqrt(D), D = q.size(-1):
       without that, scores grow with D and the softmax puts all its weight on one key.
    2. A masked key must get weight 0: before the softmax, set its score to -inf
       (scores.masked_fill(~mask, float("-inf"))); exp(-inf) is 0.
    3. The softmax runs over the keys, the last axis. Then weights @ v.
    """
    D = q.size(-1)
    scores = (q @ k.transpose(-2, -1)) / D
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights
