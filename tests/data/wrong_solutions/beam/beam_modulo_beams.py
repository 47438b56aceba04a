# mistake: The beam index is idx % K_in instead of idx // V.
"""Exercise 9: beam search's step: choosing which beams continue, and with which token.

Beam search keeps the K best partial captions of each image. At every step each of the K beams could
continue with any of the V tokens: K x V candidates, each with a score. The K best of them, over all
beams together, are the beams of the next step; a good beam may continue twice, a poor one not at all.

Check yourself:  python -m exercises check beam
The project's own answer is best_beams in model/sampling.py (beam_search calls it).
"""

import torch


def best_beams(scores, K):
    """scores: (B, K_in, V), the score of beam k followed by token v, for each of B images.
    Returns (beam, token), each (B, K) integer tensors, best first: continuation j of image b extends
    beam[b, j] with token[b, j].

    Hints:
    1. Flatten each image's candidates to (B, K_in * V) and take topk(K, dim=-1).indices.
    2. A flat index i is beam i // V and token i % V. Use //: `/` gives floats, which cannot index.
    """
    B, K_in, V = scores.shape
    flat = scores.reshape(B, K_in * V)
    idx = flat.topk(K, dim=-1).indices
    return idx % K_in, idx % V
