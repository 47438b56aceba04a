# mistake: top_k does not clamp k to the vocabulary size, so it fails when k is larger than V.
"""Exercise 8: the top-k and top-p (nucleus, Holtzman et al. 2019) filters.

Sampling from the whole vocabulary picks a rare, wrong word now and then. A filter keeps only the likely
tokens of each row and sets every other logit to -inf (probability 0). The sampler divides the logits
by the temperature first, then filters, then takes the softmax (model/sampling.py's next_token, as
Hugging Face's generate does), so a filter sees logits already divided by the temperature. Each row of the batch is one caption: filter each row on its own.

Check yourself:  python -m exercises check filters
The project's own answers are in model/sampling.py.
"""

import torch


def top_k_filter(logits, k):
    """Keep the k largest logits of each row; set the rest to -inf. logits: (B, V) -> (B, V).

    Hints:
    1. logits.topk(k, dim=-1).values[:, -1:] is each row's k-th largest, shape (B, 1).
    2. Drop every logit strictly below it (masked_fill with float("-inf")).
    3. k may be larger than V: use min(k, V).
    """
    kth = logits.topk(k, dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Keep, in each row, the smallest set of most likely tokens whose probability reaches p; set the rest
    to -inf. logits: (B, V) -> (B, V).

    Hints:
    1. sorted_logits, order = logits.sort(dim=-1, descending=True); probs = sorted_logits.softmax(-1).
    2. A token is kept while the mass of the tokens ranked above it, probs.cumsum(-1) - probs, is below p
       (so the token that makes the mass reach p stays, and the top token always does).
    3. The kept flags are in sorted order: scatter them back to vocabulary order, each row with its own
       `order` (torch.zeros_like(keep).scatter(-1, order, keep)).
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    keep = (probs.cumsum(dim=-1) - probs) < p
    keep = torch.zeros_like(keep).scatter(-1, order, keep)
    return logits.masked_fill(~keep, float("-inf"))
