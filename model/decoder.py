"""Caption decoder: a ClipCap prefix (Mokady et al. 2021) plus cross-attention over the image patches.

The sequence the decoder runs over is [prefix tokens (P) ; caption tokens (T)]. Masked self-attention
lets every position see the whole prefix and the caption tokens up to itself; cross-attention lets
every position look at the image patches. Logits come out for the caption positions only:
position t predicts caption token t + 1.
"""

import contextlib
from dataclasses import dataclass

import torch
from torch import nn

from model.attention import (
    AttentionCache,
    MultiHeadAttention,
    causal_mask,
    padding_mask,
    prefix_lm_mask,
)
from model.errors import CaptionerError
from model.hooks import mask_from, plugged
from model.mlp import MLP
from model.sizes import check_sizes
from model.vit import EncoderBlock


@dataclass
class DecoderConfig:
    vocab_size: int = 49408  # V, OpenCLIP's BPE vocabulary; a word vocabulary is far smaller
    max_len: int = 40  # longest caption in tokens, start and end tokens included
    width: int = 512  # C, the width of every token inside the decoder
    layers: int = 6  # number of decoder blocks
    heads: int = 8  # H, attention heads per block (self- and cross-attention)
    mlp_ratio: float = 4.0  # MLP hidden width = mlp_ratio * C
    prefix_len: int = 10  # P, prefix tokens made from the CLIP embedding
    clip_dim: int = 512  # E, width of the pooled CLIP embedding
    patch_dim: int = 768  # width of the ViT's patch tokens
    prefix_mapper: str = "mlp"  # "mlp" (ClipCap's MLP), "transformer" or "clipcap-transformer" (ClipCap's own)
    mapper_layers: int = 2  # blocks of a transformer prefix mapper (ClipCap's: 8)
    cross_attention: bool = True  # False gives pure ClipCap: the prefix is the only image input
    dropout: float = 0.1  # on every residual branch, training only
    fused: bool = True  # F.scaled_dot_product_attention unless attention weights are asked for
    gelu: str = "exact"  # the MLP's GELU: "exact", or "tanh" (GPT-2's approximation)
    patch_proj: str = "linear_norm"  # image tokens into cross-attention: "linear_norm", "linear" or "none" (same width)
    gpt_prefix: bool = False  # ClipCap: GPT-2 over [prefix ; caption], causal, the last prefix position predicts word 1

    ADDED_LATER = {"gelu", "patch_proj", "gpt_prefix", "mapper_layers"}  # absent from older model folders: their defaults are how those behaved
    LIMITS = dict(vocab_size=(2, 1_000_000), max_len=(2, 16384), width=(1, 16384), layers=(1, 128), heads=(1, 256),
                  mlp_ratio=(1e-3, 16), prefix_len=(0, 1024), clip_dim=(1, 16384), patch_dim=(1, 16384),
                  mapper_layers=(0, 64), dropout=(0.0, 0.99))  # see model/sizes.py
    CHOICES = dict(prefix_mapper=("mlp", "transformer", "clipcap-transformer"), gelu=("exact", "tanh"),
                   patch_proj=("linear_norm", "linear", "none"))

    def __post_init__(self):
        check_sizes(self, self.LIMITS, lambda: [
            *((getattr(self, name) not in allowed, f"{name} must be one of {', '.join(allowed)}, not "
               f"{getattr(self, name)!r}") for name, allowed in self.CHOICES.items()),
            (self.width % self.heads, f"width {self.width} is not divisible by heads {self.heads}"),
            (self.max_caption < 2, f"max_len {self.max_len} leaves no room for a caption after a prefix of "
                                   f"{self.prefix_len}"),
            (self.gpt_prefix and self.prefix_len == 0, "gpt_prefix (ClipCap's layout) needs a prefix: prefix_len "
                                                       "must be above 0"),
            (self.patch_proj == "none" and self.patch_dim != self.width,
             f"patch_proj 'none' needs patch_dim == width, not {self.patch_dim} and {self.width}"),
        ])

    @property
    def max_caption(self):
        """The longest caption, start token included, that the position table holds. max_len counts caption
        positions; in ClipCap's layout it counts the prefix's too, and the start token takes none."""
        return self.max_len - self.prefix_len + 1 if self.gpt_prefix else self.max_len


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V)
    # With return_attn, one tensor per layer. Their rows are all L = P + T positions on a first call
    # (prefix rows first) and the T new positions on a cached step; slice [:, :, -T:] for the caption.
    self_attn: list = None  # (B, H, L, L), or (B, H, T, S) on a cached step (S = every position so far)
    cross_attn: list = None  # (B, H, L, N), or (B, H, T, N)


class PrefixMapper(nn.Module):
    """Map the pooled CLIP embedding to P prefix tokens: (B, E) -> (B, P, C)."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.kind, P, C = config.prefix_mapper, config.prefix_len, config.width
        if self.kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(config.clip_dim, P * C // 2), nn.Tanh(), nn.Linear(P * C // 2, P * C))
        elif self.kind in ("transformer", "clipcap-transformer"):  # ClipCap's: 8 heads, a ReLU MLP twice as wide
            heads, ratio, gelu = (8, 2.0, "relu") if self.kind == "clipcap-transformer" else (config.heads, 4.0, "exact")
            self.linear = nn.Linear(config.clip_dim, P * C)
            self.constants = nn.Parameter(torch.randn(P, C) * 0.02)  # learned queries, read out as the prefix
            self.blocks = nn.ModuleList(EncoderBlock(C, heads, ratio, fused=config.fused, gelu=gelu)
                                        for _ in range(config.mapper_layers))
        else:
            raise ValueError(f"prefix_mapper must be 'mlp', 'transformer' or 'clipcap-transformer', not {self.kind!r}")
        self.P, self.C = P, C

    def forward(self, clip_embed):
        B = clip_embed.size(0)
        if self.kind == "mlp":
            return self.mlp(clip_embed).view(B, self.P, self.C)  # (B, P, C)
        # the CLIP embedding as P tokens, then P learned constants; the constants' outputs are the prefix
        x = self.linear(clip_embed).view(B, self.P, self.C)  # (B, P, C)
        x = torch.cat([x, self.constants.expand(B, -1, -1)], dim=1)  # (B, 2P, C)
        for block in self.blocks:
            x, _ = block(x)
        return x[:, self.P :]  # (B, P, C)


class DecoderBlock(nn.Module):
    """Pre-norm decoder block (Vaswani et al. 2017, Fig. 1, right): masked self-attention,
    cross-attention over the image, MLP; each inside a residual."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        C = config.width
        self.ln_1 = nn.LayerNorm(C)
        self.self_attn = MultiHeadAttention(C, config.heads, fused=config.fused)
        cross = config.cross_attention  # without it (pure ClipCap) both are None
        self.ln_2 = nn.LayerNorm(C) if cross else None
        self.cross_attn = MultiHeadAttention(C, config.heads, fused=config.fused) if cross else None
        self.ln_3 = nn.LayerNorm(C)
        self.mlp = MLP(C, int(C * config.mlp_ratio), gelu=config.gelu)
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x, memory=None, mask=None, memory_mask=None, cache=None, return_attn=False):
        """x: (B, L, C), memory: (B, N, C) image tokens, mask: self-attention mask (.., L, S),
        memory_mask: cross-attention mask (.., N) -> (x, self weights, cross weights)."""
        self_cache, cross_cache = cache if cache is not None else (None, None)
        a, self_w = self.self_attn(self.ln_1(x), mask=mask, cache=self_cache, return_attn=return_attn)
        x = x + self.dropout(a)
        cross_w = None
        if self.cross_attn is not None:
            a, cross_w = self.cross_attn(self.ln_2(x), memory, memory_mask, cross_cache, return_attn)
            x = x + self.dropout(a)
        x = x + self.dropout(self.mlp(self.ln_3(x)))
        return x, self_w, cross_w


class KVCache:
    """Per-layer keys and values for incremental decoding, and how many positions they cover.

    fixed=True: every step after the first sees all `capacity` slots, the empty ones masked, so each step has
    the same shapes (what torch.compile needs to build the step once); the next slot is a tensor, `position`.
    """

    def __init__(self, layers, capacity=0, fixed=False, device=None):
        self.position = torch.zeros(1, dtype=torch.long, device=device) if fixed else None  # (1,), fixed only
        self.layers = [(AttentionCache(capacity=capacity, position=self.position), AttentionCache(static=True))
                       for _ in range(layers)]
        self.length = 0  # positions (prefix included) already processed
        self.capacity = capacity

    def advance(self, n):
        """n more positions are in the cache."""
        self.length += n
        if self.position is not None:
            self.position += n  # in place: every layer's cache holds this tensor

    def reorder(self, index, images_too=True):
        """Keep batch rows `index`, e.g. to follow the beams that survive a step of beam search.
        images_too=False leaves the cross-attention keys and values alone: right when every row
        of `index` comes from a row showing the same image, as between the beams of one image."""
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            if images_too:
                cross_cache.reorder(index)


def patch_projection(c: DecoderConfig):
    """How the image's tokens enter cross-attention: (B, N, patch_dim) -> (B, N, C)."""
    if c.patch_proj == "linear_norm":
        return nn.Sequential(nn.Linear(c.patch_dim, c.width), nn.LayerNorm(c.width))
    if c.patch_proj == "linear":  # Hugging Face's enc_to_dec_proj
        return nn.Linear(c.patch_dim, c.width)
    if c.patch_proj == "none" and c.patch_dim == c.width:  # ViT-GPT2: the encoder is already as wide
        return nn.Identity()
    raise ValueError(f"patch_proj must be 'linear_norm', 'linear' or 'none' (with patch_dim == width), "
                     f"not {c.patch_proj!r} with patch_dim {c.patch_dim} and width {c.width}")


def self_attention_layout(config: DecoderConfig, T, past, lengths=None, device=None):
    """Where a call's T caption tokens sit, and what each of its positions may attend to, in either layout.

    past: positions (prefix included) already in the cache, 0 on a first call (which also runs the P prefix
    positions). T counts the tokens as they enter the blocks (ClipCap's layout has already dropped the start
    token). lengths: (B,) real lengths of those T tokens in a right-padded batch, or None.
    -> (the position-table row of the first token, the self-attention mask (.., L, S) or None).
    """
    P, first = config.prefix_len, past == 0
    if config.gpt_prefix:  # ClipCap: one position table for [prefix ; caption]
        position = P if first else past
    else:  # our layout: the caption's own table, the prefix has none
        position = 0 if first else past - P
    if position + T > config.max_len:
        raise ValueError(f"{position + T} positions are more than max_len={config.max_len}")
    L = P + T if first else T  # the positions this call runs
    if first and config.gpt_prefix:
        mask = mask_from("causal_mask", causal_mask, L, device=device)  # (L, L): GPT-2's, the prefix causal too
    elif first:
        mask = mask_from("prefix_lm_mask", prefix_lm_mask, P, T, device=device)  # (L, L): prefix seen whole
    elif L > 1:
        mask = mask_from("causal_mask", causal_mask, L, past + L, device=device)  # (T, S): all earlier positions
    else:
        mask = None  # one new token may look at every position before it: nothing to mask
    if lengths is not None:
        before = past if not first else P  # key positions ahead of this call's tokens
        keys = (plugged("padding_mask") or padding_mask)(before + lengths, before + T).to(device)  # (B, 1, 1, S)
        mask = keys if mask is None else mask & keys  # (B, 1, L, S)
    return position, mask


class CompileError(CaptionerError):
    """torch.compile could not build the decoding step (compile_steps): said in one line."""


def dict_tag_guards():
    """While compiling a step, and before each compiled step runs, torch.compile checks its guards: that every
    module, parameter and cache tensor is still what the compiled code assumed. With this setting the guards
    skip a module's subtree whose attributes have not changed since (dict version tags): about 0.2 ms a step
    instead of 0.34 on the project's 2-core CPU (bench/RESULTS.md). A torch without the setting checks them all."""
    import torch._dynamo.config as dynamo  # only here: importing it costs a second, and only --compile needs it

    if hasattr(dynamo, "use_recursive_dict_tags_for_guards"):
        return dynamo.patch(use_recursive_dict_tags_for_guards=True)
    return contextlib.nullcontext()


class CaptionDecoder(nn.Module):
    """(caption tokens, CLIP embedding, patch tokens) -> next-token logits."""

    def __init__(self, config: DecoderConfig):
        super().__init__()
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(torch.randn(c.max_len, c.width) * 0.01)
        if c.prefix_len:  # ClipCap's prefix; a plain language model (GPT-2 with cross-attention) has none
            self.prefix = PrefixMapper(c)
        if c.cross_attention:
            self.patch_proj = patch_projection(c)
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        self.compiled_step = None  # fixed_step through torch.compile, after compile_steps()

    def new_cache(self, max_tokens=None, fixed=None):
        """An empty KVCache with room for the prefix and max_tokens caption tokens (default: the most there can be).
        fixed: a fixed-length cache (KVCache); by default, when compile_steps() was called."""
        fixed = self.compiled_step is not None if fixed is None else fixed
        return KVCache(self.config.layers, capacity=self.config.prefix_len + (max_tokens or self.config.max_caption),
                       fixed=fixed, device=self.token_embedding.weight.device)

    def compile_steps(self, **options):
        """Run every cached one-token step through torch.compile (options: torch.compile's), with fixed-length
        caches: the step's shapes never change, so it is compiled once per batch size and dtype, from a cold
        compile cache too. The attention runs written out (attention() in model/attention.py), which Inductor
        fuses into its own loops; at one query that is faster than the fused kernel, which Inductor's pattern
        matcher would otherwise put back (measured in bench/decoding_profile.py)."""
        for module in self.modules():
            if isinstance(module, MultiHeadAttention):
                module.fused = False
        if options.get("backend", "inductor") == "inductor" and "mode" not in options:
            options["options"] = {"pattern_matcher": False, **options.get("options", {})}
        self.compiled_step = torch.compile(self.fixed_step, dynamic=False, fullgraph=True, **options)
        return self

    def forward(self, tokens, clip_embed, patches=None, lengths=None, patch_mask=None, cache=None,
                return_attn=False):
        """tokens: (B, T) caption ids; clip_embed: (B, E); patches: (B, N, patch_dim);
        lengths: (B,) real caption lengths for right-padded batches, or None;
        patch_mask: (B, N) True for the patches cross-attention may look at (all if None).

        With a `cache`, the first call processes prefix + tokens and later calls only the new tokens.
        Returns DecoderOutput with logits (B, T, V).
        """
        first = cache is None or cache.length == 0
        memory_mask = patch_mask[:, None, None, :] if patch_mask is not None else None  # (B, 1, 1, N)
        if not first and cache.position is not None:  # a fixed-length cache: the same shapes every step
            return self.step_with_fixed_cache(tokens, memory_mask, cache, return_attn)
        if first and self.config.gpt_prefix:  # ClipCap: the prefix's last position stands for the start token
            tokens, lengths = tokens[:, 1:], lengths - 1 if lengths is not None else None
        position, mask = self_attention_layout(self.config, tokens.size(1), 0 if first else cache.length,
                                               lengths, tokens.device)
        x = self.embed(tokens, position, clip_embed if first else None)  # (B, L, C), or (B, T, C) on a cached step
        memory = self.image_memory(patches, x.dtype) if first else None  # a cached step's keys are in the cache
        x, self_attn, cross_attn = self.run_blocks(x, memory, mask, memory_mask, cache, return_attn)
        if cache is not None:
            cache.advance(x.size(1))
        logits = self.head(x[:, self.caption_start:] if first else x)  # (B, T, V)
        return DecoderOutput(logits, self_attn, cross_attn) if return_attn else DecoderOutput(logits)

    def step_with_fixed_cache(self, tokens, memory_mask, cache, return_attn=False):
        """A cached step with a fixed-length cache (compiled after compile_steps()): one token per row."""
        if tokens.size(1) != 1 or return_attn:
            raise ValueError("a fixed-length cache takes one token per step, without return_attn")
        self_attention_layout(self.config, 1, cache.length)  # refuses a position past max_len
        if cache.length >= cache.capacity:
            raise ValueError(f"the fixed-length cache is full: it holds {cache.capacity} positions")
        tokens = tokens.clone(memory_format=torch.contiguous_format)  # a view's strides would change each step
        if self.compiled_step is None:
            logits = self.fixed_step(tokens, memory_mask, cache)
        else:
            logits = self.run_compiled_step(tokens, memory_mask, cache)
        cache.advance(1)
        return DecoderOutput(logits)

    def run_compiled_step(self, tokens, memory_mask, cache):
        """The compiled fixed_step; a compiler that cannot build it (a CPU without a C++ compiler) is one line."""
        try:
            with dict_tag_guards():
                return self.compiled_step(tokens, memory_mask, cache)
        except RuntimeError as e:
            from torch._dynamo.exc import BackendCompilerFailed
            from torch._inductor.exc import InductorError

            if not isinstance(e, (BackendCompilerFailed, InductorError)):
                raise
            raise CompileError(f"torch.compile could not build the decoding step ({str(e).strip().splitlines()[0]}); "
                               "caption without --compile, or install a C++ compiler (a CPU needs one)") from None

    def fixed_step(self, tokens, memory_mask, cache):
        """forward's cached step, with shapes that never change: the new token (B, 1) goes to slot
        cache.position (a tensor, not a Python int) and attends over all the cache's slots, the empty ones
        masked -> logits (B, 1, V). memory_mask: (B, 1, 1, N) or None, as forward makes it from patch_mask.
        Tested equal to the growing cache (tests/test_decoder.py)."""
        row = cache.position - (0 if self.config.gpt_prefix else self.config.prefix_len)  # (1,) its position-table row
        x = self.token_embedding(tokens) + self.positional_embedding[row]  # (B, 1, C)
        mask = (torch.arange(cache.capacity, device=tokens.device) <= cache.position)[None]  # (1, S): filled + its own
        x, _, _ = self.run_blocks(x, None, mask, memory_mask, cache, False)
        return self.head(x)  # (B, 1, V)

    def embed(self, tokens, position, clip_embed=None):
        """Token plus position embeddings from `position` on, after the prefix made from clip_embed (a first
        call): (B, T) -> (B, P + T, C), or (B, T, C) without clip_embed."""
        x = self.token_embedding(tokens) + self.positional_embedding[position : position + tokens.size(1)]  # (B, T, C)
        P = self.config.prefix_len
        if clip_embed is None or not P:
            return x
        prefix = self.prefix(clip_embed).to(x.dtype)  # (B, P, C)
        if self.config.gpt_prefix:
            prefix = prefix + self.positional_embedding[:P]  # the prefix takes the first positions
        return torch.cat([prefix, x], dim=1)  # (B, L, C)

    def image_memory(self, patches, dtype):
        """What cross-attention reads: the patch tokens projected to the decoder's width, (B, N, C), or None."""
        if not self.config.cross_attention:
            return None
        if patches is None:
            raise ValueError("this decoder cross-attends to the image: pass its patch tokens")
        return self.patch_proj(patches).to(dtype)  # (B, N, C)

    def run_blocks(self, x, memory, mask, memory_mask, cache, return_attn):
        """Every block in turn (a student's, when one is plugged in: model/hooks.py): (x, self- and cross-attention
        weights per layer). The caller advances the cache, if any, by x's positions."""
        self_attn, cross_attn = [], []
        theirs = plugged("decoder_block")
        for i, block in enumerate(self.blocks):
            layer_cache = cache.layers[i] if cache is not None else None
            args = (x, memory, mask, memory_mask, layer_cache, return_attn)
            x, self_w, cross_w = block(*args) if theirs is None else theirs(block, *args)
            self_attn.append(self_w)
            cross_attn.append(cross_w)
        return x, self_attn, cross_attn

    @property
    def caption_start(self):
        """Where a first call's caption predictions start: after the prefix, or (ClipCap) at its last position,
        which predicts the first word."""
        return self.config.prefix_len - 1 if self.config.gpt_prefix else self.config.prefix_len

    def head(self, x):
        """(B, T, C) -> (B, T, V) next-token logits; the output layer is the token embedding, tied."""
        return self.ln_f(x) @ self.token_embedding.weight.T
