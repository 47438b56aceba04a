# mistake: The first P rows are set True instead of the first P columns, so the prefix positions can see the whole caption.
"""Exercise 6: the prefix language model's mask (a "prefix LM", Raffel et al. 2020, section 3.2.1).

This project's decoder reads [P prefix tokens made from the image (ClipCap's prefix, Mokady et al. 2021) ;
T caption tokens]. The prefix is the image: every position may see all of it, the prefix's own positions
included, so the prefix is read both ways. (ClipCap itself runs GPT-2's fully causal mask over the same
sequence; the project's ClipCap layout, gpt_prefix, does too. Seeing the whole prefix is our choice.) The caption is predicted left to right: caption position t sees the
prefix and the caption up to itself. The prefix positions see only the prefix.

Check yourself:  python -m exercises check prefix
The project's own answer is prefix_lm_mask in model/attention.py.
"""

import torch


def prefix_lm_mask(P, T):
    """(P + T, P + T) boolean mask, True meaning "may attend"; rows are queries, columns keys.

    Hints:
    1. Start from a causal mask over all P + T positions (torch.ones(L, L, dtype=torch.bool).tril()).
    2. Then let every row see the whole prefix: the first P columns are True.
    3. Check the top-left corner: prefix rows must not see any caption column.
    """
    L = P + T
    mask = torch.ones(L, L, dtype=torch.bool).tril()
    mask[:P] = True  # the prefix is seen whole
    return mask
