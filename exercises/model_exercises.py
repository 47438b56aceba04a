"""Exercises 1 to 6, building the model: their references (the project's own model/ code), seeded cases,
and the common mistakes each can diagnose.

Every case uses batches whose rows differ (different lengths, different orders), masks that really
mask, and sizes where the mistake shows (a head width of 16, so that forgetting sqrt(D) matters).
"""

import math

import torch

from exercises.checker import Case, Exercise, Mistake
from exercises.parts import not_boolean, two_dimensional
from model.attention import attention, causal_mask, merge_heads, padding_mask, prefix_lm_mask, split_heads
from model.decoder import DecoderBlock, DecoderConfig
from model.sampling import best_beams, top_k_filter, top_p_filter
from model.vit import PatchEmbedding

# The references, taken before anything can swap them for a student's (exercises/plug.py).
REFERENCE = {
    "attention": attention, "causal_mask": causal_mask, "padding_mask": padding_mask,
    "prefix_lm_mask": prefix_lm_mask, "top_k_filter": top_k_filter, "top_p_filter": top_p_filter,
    "best_beams": best_beams, "decoder_block": DecoderBlock.forward,
    "split_heads": split_heads, "merge_heads": merge_heads,
    "patch_embedding": PatchEmbedding.forward,  # its convolution: reference_patches below
}


def seeded(seed):
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=seeded(seed))


# ---------------------------------------------------------------------------------------------- 1. attention


def attention_args(B, H, T, S, D, mask=None, seed=0):
    q, k, v = randn(B, H, T, D, seed=seed), randn(B, H, S, D, seed=seed + 1), randn(B, H, S, D, seed=seed + 2)
    return lambda: (q, k, v, mask)


def scores_then(q, k, v, mask, scale, softmax_dim=-1, mask_after=False, inverted=False):
    """Attention with one thing changed, as a student might have written it."""
    scores = q @ k.transpose(-2, -1) * scale  # (B, H, T, S)
    if mask is not None and not mask_after:
        scores = scores.masked_fill(mask if inverted else ~mask, float("-inf"))
    weights = scores.softmax(dim=softmax_dim)
    if mask is not None and mask_after:
        weights = weights.masked_fill(~mask, 0.0)
    return weights @ v, weights


LENGTHS = torch.tensor([5, 2, 4])  # three rows of different lengths
ATTENTION = Exercise(
    "attention", "scaled dot-product attention",
    {"attention": REFERENCE["attention"]},
    [
        Case("no mask, 2 images x 2 heads, 4 queries, 4 keys, head width 16", "attention",
             attention_args(2, 2, 4, 4, 16), ("out", "weights")),
        Case("cross-attention: 3 queries over 6 keys", "attention", attention_args(2, 2, 3, 6, 16, seed=3),
             ("out", "weights")),
        Case("causal mask, 5 tokens", "attention", attention_args(2, 2, 5, 5, 16, causal_mask(5), seed=6),
             ("out", "weights")),
        Case("padding mask, 3 rows of lengths 5, 2 and 4", "attention",
             attention_args(3, 2, 5, 5, 16, padding_mask(LENGTHS, 5), seed=9), ("out", "weights")),
        Case("causal and padding masks together", "attention",
             attention_args(3, 2, 5, 5, 16, causal_mask(5) & padding_mask(LENGTHS, 5), seed=12),
             ("out", "weights")),
    ],
    [
        Mistake("the scores are not divided by sqrt(D): q @ k^T grows with the head width D, and the softmax "
                "saturates; divide by math.sqrt(D), D = q.size(-1).",
                wrong=lambda q, k, v, m: scores_then(q, k, v, m, 1.0)),
        Mistake("the scores are divided by D, not by sqrt(D).",
                wrong=lambda q, k, v, m: scores_then(q, k, v, m, 1 / q.size(-1))),
        Mistake("the softmax runs over the wrong axis: each query's weights must sum to 1 over the keys, "
                "the last axis (dim=-1).",
                wrong=lambda q, k, v, m: scores_then(q, k, v, m, 1 / math.sqrt(q.size(-1)), softmax_dim=-2)),
        Mistake("the mask is applied after the softmax: the masked keys' weights were set to 0 afterwards, so "
                "a row no longer sums to 1. Fill the masked scores with -inf before the softmax.",
                wrong=lambda q, k, v, m: scores_then(q, k, v, m, 1 / math.sqrt(q.size(-1)), mask_after=True)),
        Mistake("the mask is read the wrong way round: in this project True means \"may attend\", so fill the "
                "scores where the mask is False (~mask) with -inf.",
                wrong=lambda q, k, v, m: scores_then(q, k, v, m, 1 / math.sqrt(q.size(-1)), inverted=True)),
    ],
    plugs_into="model.attention.attention, in every attention layer (the explicit path)",
)

# ---------------------------------------------------------------------------------------------- 2. masks

UPSIDE_DOWN = "the causal mask is upside down: query t may attend to keys 0..t (the lower triangle), not to the future."
MASKS = Exercise(
    "masks", "the causal and padding masks",
    {"causal_mask": REFERENCE["causal_mask"], "padding_mask": REFERENCE["padding_mask"]},
    [
        Case("causal_mask(4)", "causal_mask", lambda: (4,)),
        Case("causal_mask(1): one token", "causal_mask", lambda: (1,)),
        Case("causal_mask(3, 6): the last 3 of 6 positions (a KV cache step)", "causal_mask", lambda: (3, 6)),
        Case("padding_mask(lengths=[3, 1, 4], S=4)", "padding_mask", lambda: (torch.tensor([3, 1, 4]), 4)),
        Case("padding_mask(lengths=[2, 5], S=6)", "padding_mask", lambda: (torch.tensor([2, 5]), 6)),
    ],
    [
        Mistake("the mask is not boolean: return True for \"may attend\" and False for \"may not\" (an additive "
                "mask of 0 and -inf is another convention; this project uses booleans, as "
                "F.scaled_dot_product_attention does).",
                seen=not_boolean()),
        Mistake(UPSIDE_DOWN, function="causal_mask",  # the upper triangle with its diagonal, or without
                wrong=lambda T, S=None: ~REFERENCE["causal_mask"](T, S) | torch.eye(T, S or T, dtype=torch.bool)),
        Mistake(UPSIDE_DOWN, function="causal_mask", wrong=lambda T, S=None: ~REFERENCE["causal_mask"](T, S)),
        Mistake("a position cannot see itself: the diagonal must be True (token t's query may read token t).",
                function="causal_mask",
                wrong=lambda T, S=None: REFERENCE["causal_mask"](T, S) & ~torch.eye(T, S or T, dtype=torch.bool)),
        Mistake("when S > T the T queries are the LAST T positions (the new tokens after a cache of S - T): "
                "query t is position t + S - T and sees keys 0..t + S - T.", function="causal_mask",
                wrong=lambda T, S=None: torch.ones(T, S or T).tril().bool()),
        Mistake("the padding mask must broadcast over heads and queries: return shape (B, 1, 1, S).",
                function="padding_mask",
                seen=two_dimensional()),
        Mistake("the padding mask is the wrong way round: key s of row b is real (True) when s < lengths[b].",
                function="padding_mask", wrong=lambda lengths, S: ~REFERENCE["padding_mask"](lengths, S)),
    ],
    plugs_into="model.attention's and model.decoder's causal_mask and padding_mask",
)

# ---------------------------------------------------------------------------------------------- 3. heads


def split_args(B, T, C, H, seed):
    x = randn(B, T, C, seed=seed)
    return lambda: (x, H)


def merge_args(B, H, T, D, seed):
    x = randn(B, H, T, D, seed=seed)
    return lambda: (x,)


HEADS = Exercise(
    "heads", "splitting into heads and merging them back",
    {"split_heads": REFERENCE["split_heads"], "merge_heads": REFERENCE["merge_heads"]},
    [
        Case("split (2, 5, 12) into 3 heads", "split_heads", split_args(2, 5, 12, 3, 0)),
        Case("split (1, 4, 16) into 4 heads", "split_heads", split_args(1, 4, 16, 4, 1)),
        Case("merge (2, 3, 5, 4) back to (2, 5, 12)", "merge_heads", merge_args(2, 3, 5, 4, 2)),
    ],
    [
        Mistake("the heads are reshaped without transposing: view the channels as (B, T, H, D) first, then "
                "transpose(1, 2) to (B, H, T, D). A plain view to (B, H, T, D) mixes tokens into heads.",
                function="split_heads", wrong=lambda x, H: x.reshape(x.size(0), H, x.size(1), -1)),
        Mistake("the heads are merged without transposing back: transpose(1, 2) to (B, T, H, D) first, then "
                "reshape to (B, T, C). A plain reshape of (B, H, T, D) mixes heads into tokens.",
                function="merge_heads", wrong=lambda x: x.reshape(x.size(0), x.size(2), -1)),
        Mistake("the channels are dealt to the heads in the wrong order: head h gets the D neighbouring "
                "channels h*D .. (h+1)*D - 1, so view as (B, T, H, D), not (B, T, D, H).",
                function="split_heads",
                wrong=lambda x, H: x.view(x.size(0), x.size(1), -1, H).permute(0, 3, 1, 2)),
    ],
    plugs_into="MultiHeadAttention.split_heads and merge_heads",
)

# ---------------------------------------------------------------------------------------------- 4. patches


def patch_args(B, size, p, C, seed):
    images, weight = randn(B, 3, size, size, seed=seed), randn(C, 3, p, p, seed=seed + 1)
    return lambda: (images, weight, p)


def reference_patches(images, weight, patch_size):
    """PatchEmbedding's own path (its convolution) with this weight."""
    x = torch.nn.functional.conv2d(images, weight, stride=patch_size)  # (B, C, grid, grid)
    return x.flatten(2).transpose(1, 2)  # (B, N, C)


def patches_in_columns(images, weight, p):
    out = reference_patches(images, weight, p)  # (B, N, C)
    B, N, C = out.shape
    g = int(N**0.5)
    return out.view(B, g, g, C).transpose(1, 2).reshape(B, N, C)


def pixels_channel_last(images, weight, p):
    B, _, size, _ = images.shape
    g = size // p
    x = images.view(B, 3, g, p, g, p).permute(0, 2, 4, 3, 5, 1).reshape(B, g * g, p * p * 3)  # (B, N, p*p*3)
    return x @ weight.flatten(1).T  # the weight flattened as (3, p, p): the orders do not match


PATCHES = Exercise(
    "patches", "patch embedding without a convolution",
    {"patch_embedding": reference_patches},
    [
        Case("2 images of 8 x 8 pixels, patches of 4, width 5", "patch_embedding", patch_args(2, 8, 4, 5, 0)),
        Case("1 image of 12 x 12 pixels, patches of 4 (a 3 x 3 grid), width 6", "patch_embedding",
             patch_args(1, 12, 4, 6, 2)),
    ],
    [
        Mistake("the patches are numbered column by column: number them row by row, left to right and then top "
                "to bottom (patch i * grid + j is row i, column j), as flatten(2) of a convolution's output does.",
                wrong=patches_in_columns),
        Mistake("each patch's pixels are flattened channel-last, (p, p, 3), but the weight is a convolution's, "
                "(C, 3, p, p): flatten each patch as (3, p, p) so pixel and weight line up.",
                wrong=pixels_channel_last),
    ],
    plugs_into="PatchEmbedding.forward, in the ViT",
)

# ---------------------------------------------------------------------------------------------- 5. block


def a_block(seed=0):
    """A small decoder block with cross-attention, no dropout, and layer norms that are not the identity
    (so a norm in the wrong place changes the output)."""
    torch.manual_seed(seed)
    block = DecoderBlock(DecoderConfig(width=16, heads=2, mlp_ratio=2, dropout=0.0)).eval()
    with torch.no_grad():
        for name, p in block.named_parameters():
            if name.startswith("ln_"):
                p.copy_(torch.randn(p.shape) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
    return block


def block_args(return_attn=False, seed=0):
    block, x, memory = a_block(seed), randn(2, 5, 16, seed=seed + 1), randn(2, 7, 16, seed=seed + 2)
    memory_mask = torch.arange(7)[None, :] < torch.tensor([7, 4])[:, None]  # the second image has 4 real patches
    return lambda: (block, x, memory, causal_mask(5), memory_mask[:, None, None, :], None, return_attn)


def block_with(block, x, memory, mask, memory_mask, norm_after=False, residual_normed=False, no_cross=False,
               no_residual=False):
    """A decoder block with one thing changed, as a student might have written it."""
    for attend, norm, context, context_mask in ((block.self_attn, block.ln_1, None, mask),
                                                (None if no_cross else block.cross_attn, block.ln_2, memory,
                                                 memory_mask),
                                                (block.mlp, block.ln_3, None, None)):
        if attend is None:
            continue
        branch = (lambda h: attend(h)) if attend is block.mlp else (lambda h: attend(h, context, context_mask)[0])
        if norm_after:
            x = norm(x + branch(x))
        elif no_residual and attend is block.self_attn:
            x = branch(norm(x))
        elif residual_normed:
            h = norm(x)
            x = h + branch(h)
        else:
            x = x + branch(norm(x))
    return x


BLOCK_RETURNS = ("x", "self-attention weights", "cross-attention weights")
BLOCK = Exercise(
    "block", "a pre-norm decoder block with cross-attention",
    {"decoder_block": REFERENCE["decoder_block"]},
    [
        Case("2 captions of 5 tokens, 2 images of 7 patches (one with 4 real), causal mask", "decoder_block",
             block_args(), BLOCK_RETURNS),
        Case("the same, asking for the attention weights", "decoder_block", block_args(True, seed=3),
             BLOCK_RETURNS),
    ],
    [
        Mistake("the block is post-norm: the norm is applied after the residual add. Pre-norm normalises only "
                "the branch's input: x = x + attention(norm(x)).",
                wrong=lambda b, x, m, mask, mm, c, r: (block_with(b, x, m, mask, mm, norm_after=True), None, None)),
        Mistake("the residual adds to the normalised x: keep the residual stream as it was, x = x + "
                "branch(norm(x)), not h = norm(x); x = h + branch(h).",
                wrong=lambda b, x, m, mask, mm, c, r: (block_with(b, x, m, mask, mm, residual_normed=True), None,
                                                       None)),
        Mistake("the cross-attention step is missing (or its result is not added to x): after masked "
                "self-attention, x = x + cross_attn(ln_2(x), memory, memory_mask).",
                wrong=lambda b, x, m, mask, mm, c, r: (block_with(b, x, m, mask, mm, no_cross=True), None, None)),
        Mistake("the self-attention's result replaces x instead of being added to it: every sublayer sits in "
                "a residual, x = x + self_attn(ln_1(x), mask=mask)[0].",
                wrong=lambda b, x, m, mask, mm, c, r: (block_with(b, x, m, mask, mm, no_residual=True), None, None)),
    ],
    plugs_into="DecoderBlock.forward, in every decoder block",
)

# ---------------------------------------------------------------------------------------------- 6. prefix

PREFIX = Exercise(
    "prefix", "the prefix language model's mask (the prefix seen whole, the caption causal)",
    {"prefix_lm_mask": REFERENCE["prefix_lm_mask"]},
    [
        Case("prefix_lm_mask(P=2, T=3)", "prefix_lm_mask", lambda: (2, 3)),
        Case("prefix_lm_mask(P=4, T=1)", "prefix_lm_mask", lambda: (4, 1)),
        Case("prefix_lm_mask(P=3, T=5)", "prefix_lm_mask", lambda: (3, 5)),
    ],
    [
        Mistake("the mask is not boolean: True means \"may attend\".",
                seen=not_boolean()),
        Mistake("the prefix is causal: every position, prefix ones included, should see the whole prefix "
                "(it is the image, not a sentence to predict). Set the first P columns to True.",
                wrong=lambda P, T: REFERENCE["causal_mask"](P + T)),
        Mistake("the prefix positions can see the caption: they must not (a caption token would otherwise leak "
                "into every position through the prefix). The first P rows see only the first P columns.",
                wrong=lambda P, T: REFERENCE["prefix_lm_mask"](P, T).index_fill(0, torch.arange(P), True)),
        Mistake("the caption is not causal: caption position t may see the prefix and caption positions up to "
                "itself only.",
                wrong=lambda P, T: torch.ones(P + T, P + T, dtype=torch.bool).index_fill(
                    0, torch.arange(P), False).index_fill(1, torch.arange(P), True)),
    ],
    plugs_into="model.decoder's prefix_lm_mask",
)
