"""A fast path for decoding, beside the lesson: a fixed-length KV cache and a compiled one-token step.

The plain decoder's cache grows by one position a step, so every step has new shapes, and torch.compile would
build the step again and again. CompiledDecoder wraps a CaptionDecoder (either layout) so that every cached
step has the same shapes: the keys and values live in buffers of the cache's full capacity, the new token is
written at slot `position` (a tensor, not a Python int) and attends over every slot, the empty ones masked.
torch.compile then builds the step once per batch size and dtype, from a cold compile cache too.

It has the decoder's face for the sampler (config, max_caption, new_cache, called like the decoder), so
model/sampling.py decodes with either. The first call (prefix + start token) runs the plain decoder.
Tested equal to the plain decoder: tests/test_decoder.py (logits) and tests/test_sampling.py (tokens).
"""

import contextlib

import torch

from model.attention import AttentionCache, MultiHeadAttention
from model.decoder import DecoderOutput, KVCache
from model.errors import CaptionerError


class CompileError(CaptionerError):
    """torch.compile could not build the decoding step: said in one line."""


class FixedAttentionCache(AttentionCache):
    """An AttentionCache whose steps after the first write their one position at slot `position` (shared by every
    layer) and return every slot, filled or not: (B, H, capacity, D), the same shapes every step."""

    def __init__(self, capacity, position):
        super().__init__(capacity=capacity)
        self.position = position  # (1,) the next empty slot

    def append(self, k, v):
        if self.buffers is None:  # the first call: buffers of exactly `capacity` slots, filled from slot 0
            super().append(k, v)
            return self.k, self.v
        keys, values = self.buffers
        keys.index_copy_(2, self.position, k)  # in place, at a slot held in a tensor: no new shape
        values.index_copy_(2, self.position, v)
        return keys, values


class FixedKVCache(KVCache):
    """A KVCache of FixedAttentionCaches, all writing at one `position` tensor that advance() moves in place."""

    def __init__(self, layers, capacity, device=None):
        super().__init__(layers, capacity)
        self.position = torch.zeros(1, dtype=torch.long, device=device)  # (1,)
        self.layers = [(FixedAttentionCache(capacity, self.position), AttentionCache(static=True))
                       for _ in range(layers)]

    def advance(self, n):
        super().advance(n)
        self.position += n  # in place: every layer's cache holds this tensor


def dict_tag_guards():
    """While compiling a step, and before each compiled step runs, torch.compile checks its guards: that every
    module, parameter and cache tensor is still what the compiled code assumed. With this setting the guards
    skip a module's subtree whose attributes have not changed since (dict version tags): about 0.2 ms a step
    instead of 0.34 on the project's 2-core CPU (bench/RESULTS.md). A torch without the setting checks them all."""
    import torch._dynamo.config as dynamo  # only here: importing it costs a second, and only --compile needs it

    if hasattr(dynamo, "use_recursive_dict_tags_for_guards"):
        return dynamo.patch(use_recursive_dict_tags_for_guards=True)
    return contextlib.nullcontext()


class CompiledDecoder:
    """A CaptionDecoder whose cached one-token steps run over a fixed-length cache: through torch.compile
    (options: torch.compile's), or eagerly with compile=False (what the tests compare and the profile times).

    The attention runs written out (attention() in model/attention.py), which Inductor fuses into its own
    loops; at one query that is faster than the fused kernel, which Inductor's pattern matcher would otherwise
    put back (measured in bench/decoding_profile.py)."""

    def __init__(self, decoder, compile=True, **options):
        self.decoder, self.config, self.compiled = decoder, decoder.config, compile
        self.step = self.fixed_step
        if compile:
            for module in decoder.modules():
                if isinstance(module, MultiHeadAttention):
                    module.fused = False
            if options.get("backend", "inductor") == "inductor" and "mode" not in options:
                options["options"] = {"pattern_matcher": False, **options.get("options", {})}
            self.step = torch.compile(self.fixed_step, dynamic=False, fullgraph=True, **options)

    @property
    def max_caption(self):
        return self.decoder.max_caption

    def new_cache(self, max_tokens=None):
        """An empty FixedKVCache with room for the prefix and max_tokens caption tokens (default: the most)."""
        capacity = self.config.prefix_len + (max_tokens or self.max_caption)
        return FixedKVCache(self.config.layers, capacity, device=self.decoder.token_embedding.weight.device)

    def __call__(self, tokens, clip_embed, patches=None, lengths=None, patch_mask=None, cache=None, return_attn=False):
        """As CaptionDecoder.forward; a cached step takes one token per row (B, 1) and no return_attn."""
        if cache is None or cache.length == 0:
            return self.decoder(tokens, clip_embed, patches, lengths, patch_mask, cache, return_attn)
        if tokens.size(1) != 1 or return_attn or lengths is not None:
            raise ValueError("a fixed-length cache takes one token per step, without lengths or return_attn")
        if self.decoder.caption_row(cache.length) >= self.config.max_len:
            raise ValueError(f"{self.decoder.caption_row(cache.length) + 1} positions are more than max_len={self.config.max_len}")
        if cache.length >= cache.capacity:
            raise ValueError(f"the fixed-length cache is full: it holds {cache.capacity} positions")
        tokens = tokens.clone(memory_format=torch.contiguous_format)  # a view's strides would change each step
        memory_mask = patch_mask[:, None, None, :] if patch_mask is not None else None  # (B, 1, 1, N)
        logits = self.run_step(tokens, memory_mask, cache)
        cache.advance(1)
        return DecoderOutput(logits)

    def run_step(self, tokens, memory_mask, cache):
        """The (compiled) step; a compiler that cannot build it (a CPU without a C++ compiler) is one line."""
        try:
            with dict_tag_guards() if self.compiled else contextlib.nullcontext():
                return self.step(tokens, memory_mask, cache)
        except RuntimeError as e:
            from torch._dynamo.exc import BackendCompilerFailed
            from torch._inductor.exc import InductorError

            if not isinstance(e, (BackendCompilerFailed, InductorError)):
                raise
            raise CompileError(f"torch.compile could not build the decoding step ({str(e).strip().splitlines()[0]}); "
                               "caption without --compile, or install a C++ compiler (a CPU needs one)") from None

    def fixed_step(self, tokens, memory_mask, cache):
        """The decoder's cached step with shapes that never change: the new token (B, 1) goes to slot
        cache.position and attends over all the cache's slots, the empty ones masked -> logits (B, 1, V)."""
        d = self.decoder
        row = d.caption_row(cache.position)  # (1,) its position-table row, a tensor
        x = d.token_embedding(tokens) + d.positional_embedding[row]  # (B, 1, C)
        mask = (torch.arange(cache.capacity, device=tokens.device) <= cache.position)[None]  # (1, S): filled + its own
        x, _, _ = d.run_blocks(x, None, mask, memory_mask, cache, False)
        return d.head(x)  # (B, 1, V)


def compile_steps(model, **options):
    """Decode `model` (a CaptionModel) with compiled steps from now on: its generate() uses a CompiledDecoder."""
    model.fast_steps = CompiledDecoder(model.decoder, **options)
    return model
