"""Hook points: the few places where the model lets a function written elsewhere stand in for its own.

The exercises (exercises/) plug a student's functions in here, so the real captioner trains and captions
with them. Each hook is called with exactly the signature of its exercise's stub, and the model adapts
what comes back (a mask is moved to the model's device); nothing else of the model changes. With no
function plugged in, the model runs its own code, and the fused attention kernel where it may.

    hook            called as                                        where
    attention       attention(q, k, v, mask) -> (out, weights)       MultiHeadAttention.forward
    causal_mask     causal_mask(T, S) -> (T, S)                      the decoder's self-attention masks
    padding_mask    padding_mask(lengths, S) -> (B, 1, 1, S)         the decoder's padded batches
    prefix_lm_mask  prefix_lm_mask(P, T) -> (P + T, P + T)           the decoder's first call
    split_heads     split_heads(x, heads) -> (B, H, T, D)            MultiHeadAttention.forward
    merge_heads     merge_heads(x) -> (B, T, C)                      MultiHeadAttention.forward
    patch_embedding patch_embedding(images, weight, p) -> (B, N, C)  PatchEmbedding.forward
    decoder_block   decoder_block(block, x, memory, mask, memory_mask, cache, return_attn)
                                                                     CaptionDecoder.forward, every layer
    top_k_filter    top_k_filter(logits, k) -> (B, V)                the sampler
    top_p_filter    top_p_filter(logits, p) -> (B, V)                the sampler
    best_beams      best_beams(scores, K) -> (beam, token)           beam search
"""

from contextlib import contextmanager

HOOKS = ("attention", "causal_mask", "padding_mask", "prefix_lm_mask", "split_heads", "merge_heads",
         "patch_embedding", "decoder_block", "top_k_filter", "top_p_filter", "best_beams")
MADE_ON_A_DEVICE = ("causal_mask", "prefix_lm_mask")  # masks the model builds with device=...; plug() moves a student's there
PLUGGED = {}  # hook -> the function standing in for the model's own while it is plugged in


def plugged(name):
    """The function plugged in at hook `name`, or None (the model runs its own code)."""
    return PLUGGED.get(name)


@contextmanager
def plug(functions):
    """with plug({"attention": my_attention, ...}): the model calls those functions at those hooks."""
    unknown = sorted(set(functions) - set(HOOKS))
    if unknown:
        raise ValueError(f"no hook named {', '.join(unknown)}; the hooks are: {', '.join(HOOKS)}")
    before = dict(PLUGGED)
    for name, theirs in functions.items():  # the model asks its own masks for a device; the stubs take none
        PLUGGED[name] = (lambda *args, device=None, f=theirs: f(*args).to(device)) if name in MADE_ON_A_DEVICE else theirs
    try:
        yield
    finally:
        PLUGGED.clear()
        PLUGGED.update(before)
