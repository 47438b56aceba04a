# mistake: The self-attention gets memory_mask and the cross-attention gets the causal mask: the two masks are swapped.
"""Exercise 5: a pre-norm decoder block with cross-attention (Vaswani et al. 2017, Fig. 1, right).

Three sublayers, each inside a residual: masked self-attention over the caption so far, cross-attention
from the caption to the image's patch tokens, and an MLP. Pre-norm (as GPT-2 and most models since) means
each sublayer reads a normalised copy of x and adds its result to x itself.

Check yourself:  python -m exercises check block
The project's own answer is DecoderBlock.forward in model/decoder.py.
"""

import torch


def decoder_block(block, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
    """block: a model.decoder.DecoderBlock, whose parts you use: block.ln_1, block.self_attn, block.ln_2,
    block.cross_attn, block.ln_3, block.mlp, block.dropout.
    x: (B, L, C) the decoder's positions; memory: (B, N, C) the image's tokens; mask: the self-attention
    mask (.., L, S); memory_mask: the cross-attention mask (.., N).
    Returns (x, self-attention weights, cross-attention weights), the weights None unless return_attn.

    Each attention module is called as attn(queries, context, mask, cache, return_attn) and returns
    (out, weights); context is None for self-attention. cache is (self_cache, cross_cache) or None.

    Hints:
    1. One line per sublayer: x = x + block.dropout(sublayer(norm(x))). The norm is applied to the
       sublayer's input only; x itself is never normalised here.
    2. Self-attention: block.self_attn(block.ln_1(x), mask=mask, cache=self_cache, return_attn=return_attn).
    3. Cross-attention: the queries come from the caption, block.ln_2(x); the keys and values from memory.
    4. Then the MLP with block.ln_3.
    """
    self_cache, cross_cache = cache if cache is not None else (None, None)
    h, self_weights = block.self_attn(block.ln_1(x), mask=memory_mask, cache=self_cache,
                                      return_attn=return_attn)
    x = x + block.dropout(h)
    cross_weights = None
    if memory is not None:
        h, cross_weights = block.cross_attn(block.ln_2(x), memory, mask=mask, cache=cross_cache,
                                            return_attn=return_attn)
        x = x + block.dropout(h)
    x = x + block.dropout(block.mlp(block.ln_3(x)))
    return x, self_weights, cross_weights
