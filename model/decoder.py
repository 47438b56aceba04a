"""Caption decoder: a ClipCap prefix (Mokady et al. 2021) plus cross-attention over the image patches.

The sequence the decoder runs over is [prefix tokens (P) ; caption tokens (T)]. Masked self-attention
lets every position see the whole prefix and the caption tokens up to itself; cross-attention lets
every position look at the image patches. forward reads embed -> blocks -> head, on a first call or a
cached step. Beside it: ClipCap's own layout (model/clipcap_layout.py) and a fixed-length cache with a
compiled step (model/compiled.py), each tested equal to this file's decoder.
"""

from dataclasses import dataclass

import torch
from torch import nn

from model.attention import AttentionCache, MultiHeadAttention, causal_mask, padding_mask, prefix_lm_mask
from model.hooks import plugged
from model.mlp import MLP
from model.sizes import check_sizes
from model.prefix import PrefixMapper


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
            (self.gpt_prefix and self.max_len <= self.prefix_len,  # ClipCap's table holds the prefix's positions too
             f"max_len {self.max_len} leaves no room for a caption after a prefix of {self.prefix_len}"),
            (self.gpt_prefix and self.prefix_len == 0, "gpt_prefix (ClipCap's layout) needs a prefix: prefix_len "
                                                       "must be above 0"),
            (self.patch_proj == "none" and self.patch_dim != self.width,
             f"patch_proj 'none' needs patch_dim == width, not {self.patch_dim} and {self.width}"),
        ])


@dataclass
class DecoderOutput:
    logits: torch.Tensor  # (B, T, V)
    # With return_attn, one tensor per layer. Their rows are all L = P + T positions on a first call
    # (prefix rows first) and the T new positions on a cached step; slice [:, :, -T:] for the caption.
    self_attn: list = None  # (B, H, L, L), or (B, H, T, S) on a cached step (S = every position so far)
    cross_attn: list = None  # (B, H, L, N), or (B, H, T, N)


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
    """Per-layer keys and values for incremental decoding, and how many positions (prefix included) they cover."""

    def __init__(self, layers, capacity=0):
        self.layers = [(AttentionCache(capacity=capacity), AttentionCache(static=True)) for _ in range(layers)]
        self.length = 0  # positions already processed
        self.capacity = capacity

    def advance(self, n):
        """n more positions are in the cache."""
        self.length += n

    def reorder(self, index, images_too=True):
        """Keep batch rows `index`, e.g. to follow the beams that survive a step of beam search.
        images_too=False leaves the cross-attention keys and values alone: right when every row
        of `index` comes from a row showing the same image, as between the beams of one image."""
        for self_cache, cross_cache in self.layers:
            self_cache.reorder(index)
            if images_too:
                cross_cache.reorder(index)


class CaptionDecoder(nn.Module):
    """(caption tokens, CLIP embedding, patch tokens) -> next-token logits.

    The layout of a prefix language model: the prefix has no positions of its own and is seen whole; the
    caption has its own position table and is read causally. ClipCap's layout (GPT-2 over [prefix ; caption],
    causal throughout) is ClipCapDecoder in model/clipcap_layout.py, which changes only first_call and
    caption_row.
    """

    gpt_prefix = False  # the layout this class runs: config.gpt_prefix must agree (model.caption_model.build_decoder)

    def __init__(self, config: DecoderConfig):
        super().__init__()
        if bool(config.gpt_prefix) != self.gpt_prefix:
            raise ValueError(f"{type(self).__name__} does not run gpt_prefix={config.gpt_prefix}: build the decoder "
                             "with model.caption_model.build_decoder(config)")
        self.config = c = config
        self.token_embedding = nn.Embedding(c.vocab_size, c.width)
        self.positional_embedding = nn.Parameter(torch.randn(c.max_len, c.width) * 0.01)
        if c.prefix_len:  # ClipCap's prefix; a plain language model (GPT-2 with cross-attention) has none
            self.prefix = PrefixMapper(c)
        if c.cross_attention:  # the image's tokens into cross-attention: (B, N, patch_dim) -> (B, N, C)
            self.patch_proj = {"linear_norm": lambda: nn.Sequential(nn.Linear(c.patch_dim, c.width), nn.LayerNorm(c.width)),
                               "linear": lambda: nn.Linear(c.patch_dim, c.width),  # Hugging Face's enc_to_dec_proj
                               "none": nn.Identity}[c.patch_proj]()  # ViT-GPT2: the encoder is as wide already
        self.blocks = nn.ModuleList(DecoderBlock(c) for _ in range(c.layers))
        self.ln_f = nn.LayerNorm(c.width)
        nn.init.normal_(self.token_embedding.weight, std=0.02)

    def forward(self, tokens, clip_embed, patches=None, lengths=None, patch_mask=None, cache=None,
                return_attn=False):
        """tokens: (B, T) caption ids; clip_embed: (B, E); patches: (B, N, patch_dim);
        lengths: (B,) real caption lengths for right-padded batches, or None;
        patch_mask: (B, N) True for the patches cross-attention may look at (all if None).

        With a `cache`, the first call processes prefix + tokens and later calls only the new tokens.
        Returns DecoderOutput with logits (B, T, V): position t predicts token t + 1.
        """
        T = tokens.size(1)
        if cache is None or cache.length == 0:  # the first call: the prefix, the caption, and the image
            x, mask = self.first_call(tokens, clip_embed)  # (B, L, C), (L, L)
            memory = self.image_memory(patches, x.dtype)  # (B, N, C) or None
        else:  # a cached step: only the new tokens; earlier positions and the image are in the cache
            x, mask = self.cached_step(tokens, cache.length)  # (B, T, C), (T, S) or None
            memory = None
        if lengths is not None:  # right-padded rows: no key after a row's last real token
            S = x.size(1) + (cache.length if cache is not None else 0)  # keys attended over
            keys = (plugged("padding_mask") or padding_mask)(S - T + lengths, S).to(x.device)  # (B, 1, 1, S)
            mask = keys if mask is None else mask & keys  # (B, 1, L, S)
        memory_mask = patch_mask[:, None, None, :] if patch_mask is not None else None  # (B, 1, 1, N)
        x, self_attn, cross_attn = self.run_blocks(x, memory, mask, memory_mask, cache, return_attn)
        if cache is not None:
            cache.advance(x.size(1))
        logits = self.head(x[:, -T:])  # (B, T, V): the positions that predict the caption's next tokens
        return DecoderOutput(logits, self_attn, cross_attn) if return_attn else DecoderOutput(logits)

    def first_call(self, tokens, clip_embed):
        """[prefix ; caption] embedded, (B, P + T, C), and the prefix-LM mask (P + T, P + T): every position
        sees the whole prefix, each caption position the caption up to itself."""
        P, T = self.config.prefix_len, tokens.size(1)
        x = self.embed(tokens, 0)  # (B, T, C): the caption's own position table, from row 0
        if P:
            x = torch.cat([self.prefix(clip_embed).to(x.dtype), x], dim=1)  # (B, L, C)
        return x, (plugged("prefix_lm_mask") or prefix_lm_mask)(P, T, device=x.device)

    def cached_step(self, tokens, past):
        """The T new tokens after `past` cached positions, embedded, (B, T, C), and their mask (T, S): each sees
        every earlier position and the new ones up to itself (one token needs no mask)."""
        T = tokens.size(1)
        x = self.embed(tokens, self.caption_row(past))  # (B, T, C)
        mask = (plugged("causal_mask") or causal_mask)(T, past + T, device=x.device) if T > 1 else None
        return x, mask

    def caption_row(self, past):
        """The position-table row of the token after `past` positions: the caption's table has no prefix rows."""
        return past - self.config.prefix_len

    @property
    def max_caption(self):
        """The longest caption, start token included, that the position table holds."""
        return self.config.max_len

    def new_cache(self, max_tokens=None):
        """An empty KVCache with room for the prefix and max_tokens caption tokens (default: the most there can be)."""
        return KVCache(self.config.layers, capacity=self.config.prefix_len + (max_tokens or self.max_caption))

    def embed(self, tokens, row):
        """Token plus position embeddings, the positions from table row `row` on: (B, T) -> (B, T, C)."""
        if row + tokens.size(1) > self.config.max_len:
            raise ValueError(f"{row + tokens.size(1)} positions are more than max_len={self.config.max_len}")
        return self.token_embedding(tokens) + self.positional_embedding[row : row + tokens.size(1)]  # (B, T, C)

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

    def head(self, x):
        """(B, T, C) -> (B, T, V) next-token logits; the output layer is the token embedding, tied."""
        return self.ln_f(x) @ self.token_embedding.weight.T
