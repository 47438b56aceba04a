"""Exercises 7 to 9, decoding: the KV cache step, the top-k and top-p filters, and beam search's choice of
beams. References are the project's own model/ code; cases and common mistakes as in model_exercises.py.
"""

import torch

from exercises.checker import Case, Exercise, Mistake
from exercises.model_exercises import REFERENCE, randn
from exercises.parts import (cache_empty, cache_forgets_prompt, cache_keeps_newest, decode_in_steps, float_beam_index,
                             probabilities, rows_alone_are_right, zero_not_minus_infinity)

# ---------------------------------------------------------------------------------------------- 7. cache


def reference_cached_attention(q, k, v, past=None):
    """What MultiHeadAttention does with an AttentionCache (there into buffers made once; the same values)."""
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, S, D)
    T, S = q.size(2), k.size(2)
    out, _ = REFERENCE["attention"](q, k, v, REFERENCE["causal_mask"](T, S))  # the new queries are the last T
    return out, (k, v)


def sequence(L, seed):
    q, k, v = randn(2, 2, L, 16, seed=seed), randn(2, 2, L, 16, seed=seed + 1), randn(2, 2, L, 16, seed=seed + 2)
    return lambda: (q, k, v)


def attends_to_every_key(q, k, v, past=None):
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    return REFERENCE["attention"](q, k, v)[0], (k, v)  # no mask: the prompt's positions see later ones


CACHE_RETURNS = ("out", ("cached keys", "cached values"))
PROMPT = 4  # positions of the first call: a prefix of 3 and the start token
CACHE = Exercise(
    "cache", "self-attention with a KV cache",
    {"cached_attention": reference_cached_attention},
    [
        Case("a prompt of 4 positions, then 3 tokens one at a time", "cached_attention", sequence(7, 0),
             CACHE_RETURNS, decode_in_steps([PROMPT, 1, 1, 1])),
        Case("a prompt of 4 positions, then 2 tokens at once, then 1", "cached_attention", sequence(7, 3),
             CACHE_RETURNS, decode_in_steps([PROMPT, 2, 1])),
    ],
    [
        Mistake("the cache returned is empty: return the keys and values of every position so far, "
                "(k_all, v_all), so the next step can attend to them.",
                seen=cache_empty()),
        Mistake("your cache forgets the prompt (the prefix and the start token): after the first call it must "
                "hold all of the first call's keys and values, not only the newest position's.",
                seen=cache_forgets_prompt(PROMPT)),
        Mistake("your cache keeps only the newest step: concatenate the past keys and values with the new ones "
                "along the positions axis, torch.cat([past_k, k], dim=2).",
                seen=cache_keeps_newest()),
        Mistake("on the first call (several positions at once) each position must see only the positions up "
                "to itself: use causal_mask(T, S), with the T new queries the last T of the S keys.",
                wrong=attends_to_every_key),
    ],
)

# ---------------------------------------------------------------------------------------------- 8. filters


def logits_rows(seed, sharpness=(0.5, 1.0, 2.0, 4.0)):
    """Four rows over a vocabulary of 10, each in its own random order and with its own peakedness, so the
    tokens kept differ from row to row."""
    logits = randn(len(sharpness), 10, seed=seed) * torch.tensor(sharpness)[:, None]
    return logits


def top_p_without_the_crossing_token(logits, p):
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    keep_sorted = sorted_logits.softmax(-1).cumsum(-1) < p
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


def top_p_in_vocabulary_order(logits, p):
    probs = logits.softmax(-1)
    return logits.masked_fill(probs.cumsum(-1) - probs >= p, float("-inf"))


FILTERS = Exercise(
    "filters", "the top-k and top-p (nucleus) filters",
    {"top_k_filter": REFERENCE["top_k_filter"], "top_p_filter": REFERENCE["top_p_filter"]},
    [
        Case("top_k_filter, k=3, 4 rows over 10 tokens", "top_k_filter", lambda: (logits_rows(0), 3)),
        Case("top_k_filter, k=1", "top_k_filter", lambda: (logits_rows(1), 1)),
        Case("top_k_filter, k=50: more than the 10 tokens there are", "top_k_filter", lambda: (logits_rows(2), 50)),
        Case("top_p_filter, p=0.5, 4 rows of different peakedness", "top_p_filter", lambda: (logits_rows(3), 0.5)),
        Case("top_p_filter, p=0.9", "top_p_filter", lambda: (logits_rows(4), 0.9)),
        Case("top_p_filter, p=0.0001: only each row's top token", "top_p_filter", lambda: (logits_rows(5), 1e-4)),
    ],
    [
        Mistake("k can be larger than the vocabulary: use min(k, V) before topk.", function="top_k_filter",
                raised=RuntimeError),
        Mistake("the filter returns probabilities: return the logits, with the dropped tokens set to -inf "
                "(the sampler applies the temperature and the softmax afterwards).", seen=probabilities()),
        Mistake("dropped tokens must be set to -inf, not to 0: a logit of 0 still has a probability.",
                seen=zero_not_minus_infinity()),
        Mistake("your top-k keeps k - 1 tokens: keep every logit at least as large as the k-th largest "
                "(drop only logits < kth).", function="top_k_filter",
                wrong=lambda logits, k: logits.masked_fill(logits <= logits.topk(min(k, logits.size(-1)))
                                                           .values[:, -1:], float("-inf"))),
        Mistake("each row alone is filtered right, but not a batch: a row used another row's sorting order. "
                "Sort, cumsum and scatter along dim=-1 so each row keeps its own order.",
                function="top_p_filter", seen=rows_alone_are_right()),
        Mistake("your top-p keeps too few tokens: the token that makes the mass reach p must stay. Keep a "
                "token while the mass of the tokens ranked above it is still below p (cumsum - probs < p).",
                function="top_p_filter", wrong=top_p_without_the_crossing_token),
        Mistake("the mass is added up in vocabulary order: sort each row's probabilities from the largest "
                "down first, and keep the most likely tokens.", function="top_p_filter",
                wrong=top_p_in_vocabulary_order),
    ],
    plugs_into="model.sampling's top_k_filter and top_p_filter, in the sampler",
)

# ---------------------------------------------------------------------------------------------- 9. beam


def beam_scores(B, K_in, V, seed, only_first_beam=False):
    scores = randn(B, K_in, V, seed=seed).log_softmax(-1)
    if only_first_beam:
        scores[:, 1:] = float("-inf")  # the first step: every beam is the same start token, one is kept
    return lambda: (scores, K_in)


def best_per_beam(scores, K):
    token = scores.argmax(dim=-1)  # (B, K)
    return torch.arange(K).expand_as(token), token


def flat_index_decoded_wrong(scores, K):
    B, K_in, V = scores.shape
    best = scores.reshape(B, K_in * V).topk(K, dim=-1).indices
    return best % K_in, best // K_in


BEAM = Exercise(
    "beam", "beam search: choosing the K best continuations",
    {"best_beams": REFERENCE["best_beams"]},
    [
        Case("2 images, 3 beams, vocabulary of 7", "best_beams", beam_scores(2, 3, 7, 0), ("beam", "token")),
        Case("the first step: only beam 0 is alive (the others are -inf)", "best_beams",
             beam_scores(2, 3, 7, 1, only_first_beam=True), ("beam", "token")),
        Case("3 images, 4 beams, vocabulary of 5", "best_beams", beam_scores(3, 4, 5, 2), ("beam", "token")),
    ],
    [
        Mistake("the beam index is a float: `best / V` is true division. Use best // V (integer division on "
                "integer tensors) and best % V.",
                seen=float_beam_index()),
        Mistake("you chose within each beam: the K best continuations come from all K x V (beam, token) pairs "
                "of an image, so one beam may continue twice and another not at all. Flatten to (B, K*V) "
                "before topk.", wrong=best_per_beam),
        Mistake("beam and token are swapped: for an index into the flattened (K, V) scores, the beam is "
                "index // V and the token index % V.", wrong=lambda s, K: REFERENCE["best_beams"](s, K)[::-1]),
        Mistake("the flat index is decoded with the wrong size: the scores are (K, V) flattened row by row, "
                "so beam = index // V and token = index % V (V, not K).", wrong=flat_index_decoded_wrong),
    ],
    plugs_into="model.sampling.best_beams, in beam search",
)
