# mistake: The loop writes row b's length into every row (mask[:, :lengths[b]]), so all rows get the longest length: right for a batch of 1 only.
"""Exercise 2: the causal and padding masks.

A caption is predicted left to right, so token t may not read tokens after it (the causal mask); a
batch pads short captions to the longest, and nothing may read the padding (the padding mask). In this
project a mask is a boolean tensor, True meaning "may attend" (as F.scaled_dot_product_attention), and
masks combine with `&`.

Check yourself:  python -m exercises check masks
The project's own answers are in model/attention.py.
"""

import torch


def causal_mask(T, S=None):
    """(T, S) boolean mask: query t may attend to key s when s <= t + (S - T).

    S defaults to T. When S > T the T queries are the LAST T of S positions: the new tokens of a decoding
    step, after S - T positions kept in a cache. So query 0 is position S - T.

    Hints:
    1. torch.arange(S)[None, :] is every key's position, shape (1, S); make the queries' positions, shape
       (T, 1), starting at S - T. Comparing them broadcasts to (T, S).
    2. The diagonal is True: a token's query may read its own key.
    """
    if S is None:
        S = T
    keys = torch.arange(S)[None, :]
    queries = torch.arange(S - T, S)[:, None]
    return keys <= queries


def padding_mask(lengths, S):
    """(B, 1, 1, S) boolean mask from per-row lengths (B,): key s of row b is real when s < lengths[b].

    The two middle axes of size 1 let it broadcast over the heads and the queries.

    Hints:
    1. Compare torch.arange(S, device=lengths.device) with lengths[:, None]: that is (B, S).
    2. Add the two axes with [:, None, None, :].
    """
    B = lengths.size(0)
    mask = torch.zeros(B, S, dtype=torch.bool, device=lengths.device)
    for b in range(B):
        mask[:, :lengths[b]] = True
    return mask[:, None, None, :]
