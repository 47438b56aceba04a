# mistake: Only the new keys and values are returned instead of k_all and v_all, so the next call has lost the prompt and every earlier step.
"""Exercise 7: self-attention with a KV cache.

A decoder writes one token at a time. Without a cache, every step recomputes the keys and values of every
earlier position; with one, each step computes only the new position's and appends them. The first call
processes the whole prompt (the image's prefix and the start token) at once, and the cache must keep all
of it: later tokens attend to the prefix through the cache.

Check yourself:  python -m exercises check cache
The project's own answer is AttentionCache and MultiHeadAttention in model/attention.py.
"""

import math

import torch


def cached_attention(q, k, v, past=None):
    """Attention of T new positions, given the keys and values of the positions before them.

    q, k, v: (B, H, T, D), the new positions' queries, keys and values.
    past: None on the first call, else (past_k, past_v), each (B, H, S0, D), what the last call returned.
    Returns (out, (k_all, v_all)): out (B, H, T, D); k_all, v_all (B, H, S0 + T, D), every position so far.

    Hints:
    1. k_all = torch.cat([past_k, k], dim=2) (and v alike); on the first call, k_all = k.
    2. The T new queries are the last T of the S = S0 + T positions: query t may see keys 0 .. S0 + t.
       Build that (T, S) mask (exercise 2's causal_mask(T, S)) and use exercise 1's attention.
    3. Return every position's keys and values, the prompt's included, not only the new ones.
    """
    if past is None:
        k_all, v_all = k, v
    else:
        past_k, past_v = past
        k_all = torch.cat([past_k, k], dim=2)
        v_all = torch.cat([past_v, v], dim=2)
    T, S = q.size(2), k_all.size(2)
    keys = torch.arange(S, device=q.device)[None, :]
    queries = torch.arange(S - T, S, device=q.device)[:, None]
    mask = keys <= queries
    scores = q @ k_all.transpose(-2, -1) / math.sqrt(q.size(-1))
    scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v_all, (k, v)
