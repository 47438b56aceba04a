"""The decoder block equals torch's, causality and the prefix hold, and the KV cache changes nothing."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from model.attention import causal_mask
from model.caption_model import build_decoder
from model.clipcap_layout import ClipCapDecoder
from model.compiled import CompiledDecoder
from model.decoder import CaptionDecoder, DecoderBlock, DecoderConfig
from model.sampling import sample

B, T, N, V = 3, 6, 9, 50


def tiny_config(**overrides):
    fields = dict(vocab_size=V, max_len=16, width=32, layers=2, heads=4, prefix_len=3, clip_dim=24,
                  patch_dim=20, dropout=0.0)
    fields.update(overrides)
    return DecoderConfig(**fields)


def inputs(config, batch=B, steps=T):
    tokens = torch.randint(0, config.vocab_size, (batch, steps))
    return tokens, torch.randn(batch, config.clip_dim), torch.randn(batch, N, config.patch_dim)


@pytest.mark.parametrize("fused", [False, True])
def test_decoder_block_equals_torch_transformer_decoder_layer(fused):
    config = tiny_config(fused=fused)
    ours = DecoderBlock(config).eval()
    ref = nn.TransformerDecoderLayer(32, 4, dim_feedforward=128, dropout=0.0, activation="gelu",
                                     batch_first=True, norm_first=True).eval()
    pairs = {"self_attn": ours.self_attn, "multihead_attn": ours.cross_attn, "linear1": ours.mlp.c_fc,
             "linear2": ours.mlp.c_proj, "norm1": ours.ln_1, "norm2": ours.ln_2, "norm3": ours.ln_3}
    with torch.no_grad():
        for ref_name, module in pairs.items():
            for name, p in getattr(ref, ref_name).named_parameters():
                p.copy_(torch.randn_like(p) * 0.3)  # random values everywhere, biases included
                dict(module.named_parameters())[name].copy_(p)
    x, memory = torch.randn(B, T, 32), torch.randn(B, N, 32)
    memory_keep = torch.rand(B, N) > 0.3
    memory_keep[:, 0] = True
    mask = causal_mask(T)
    out, _, _ = ours(x, memory, mask, memory_keep[:, None, None, :])
    expected = ref(x, memory, tgt_mask=~mask, memory_key_padding_mask=~memory_keep)  # torch: True = blocked
    assert_close(out, expected)


def test_changing_a_later_token_changes_no_earlier_logit():
    config = tiny_config()
    decoder = CaptionDecoder(config).eval()
    tokens, clip_embed, patches = inputs(config)
    before = decoder(tokens, clip_embed, patches).logits
    changed = tokens.clone()
    changed[:, 4] = (changed[:, 4] + 1) % V
    after = decoder(changed, clip_embed, patches).logits
    assert_close(before[:, :4], after[:, :4])
    assert not torch.allclose(before[:, 4:], after[:, 4:])


def test_prefix_is_seen_whole_and_caption_causally():
    config = tiny_config()
    decoder = CaptionDecoder(config).eval()
    tokens, clip_embed, patches = inputs(config)
    out = decoder(tokens, clip_embed, patches, return_attn=True)
    P = config.prefix_len
    weights = out.self_attn[0]  # (B, H, L, L)
    assert weights.shape == (B, 4, P + T, P + T)
    assert (weights[..., :P] > 0).all()  # every position, prefix ones included, sees every prefix key
    assert (weights[..., :P, P:] == 0).all()  # the prefix does not see the caption
    future = ~causal_mask(T)  # caption keys after the query
    assert (weights[..., P:, P:][..., future] == 0).all()
    assert (weights[..., P:, P:][..., ~future] > 0).all()
    assert out.cross_attn[0].shape == (B, 4, P + T, N)


def test_padding_does_not_change_the_real_positions():
    config = tiny_config()
    decoder = CaptionDecoder(config).eval()
    tokens, clip_embed, patches = inputs(config, batch=1)
    alone = decoder(tokens[:, :4], clip_embed, patches).logits
    padded = tokens.clone()
    padded[:, 4:] = 0
    batch = decoder(padded, clip_embed, patches, lengths=torch.tensor([4])).logits
    assert_close(batch[:, :4], alone)


def test_patch_mask_hides_patches():
    config = tiny_config()
    decoder = CaptionDecoder(config).eval()
    tokens, clip_embed, patches = inputs(config)
    keep = torch.zeros(B, N, dtype=torch.bool)
    keep[:, :4] = True
    out = decoder(tokens, clip_embed, patches, patch_mask=keep, return_attn=True)
    assert (out.cross_attn[1][..., 4:] == 0).all() and (out.cross_attn[1][..., :4] > 0).all()
    noisy = patches.clone()
    noisy[:, 4:] += 5 * torch.randn(B, N - 4, config.patch_dim)
    assert_close(decoder(tokens, clip_embed, noisy, patch_mask=keep).logits, out.logits)


@pytest.mark.parametrize("overrides", [{}, {"prefix_mapper": "transformer"}, {"cross_attention": False}])
def test_incremental_decoding_with_cache_equals_full_recomputation(overrides):
    config = tiny_config(**overrides)
    decoder = CaptionDecoder(config).eval()
    tokens, clip_embed, patches = inputs(config)
    full = decoder(tokens, clip_embed, patches).logits  # (B, T, V)
    cache = decoder.new_cache()
    steps = [decoder(tokens[:, :2], clip_embed, patches, cache=cache).logits]  # prefill prefix + 2 tokens
    for t in range(2, T):
        steps.append(decoder(tokens[:, t : t + 1], clip_embed, patches, cache=cache).logits)
    assert_close(torch.cat(steps, dim=1), full)
    assert cache.length == config.prefix_len + T


def test_the_masks_and_positions_of_both_layouts_by_hand():
    """Where a call's tokens sit in the position table, and the mask they attend with, written out for P = 3
    prefix positions: our layout (the caption has its own table) and ClipCap's (one table for both, causal)."""
    P, T = 3, 4
    ours, clipcap = CaptionDecoder(tiny_config(prefix_len=P)), build_decoder(tiny_config(prefix_len=P, gpt_prefix=True))
    assert type(clipcap) is ClipCapDecoder
    tokens, clip_embed, _ = inputs(ours.config, batch=2, steps=T)
    x, mask = ours.first_call(tokens, clip_embed)  # prefix + T caption tokens
    assert x.shape == (2, P + T, 32) and mask.tolist() == [[1, 1, 1, 0, 0, 0, 0]] * 3 + [
        [1, 1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 1]]
    x, mask = clipcap.first_call(tokens, clip_embed)  # GPT-2's: the prefix is causal too, and no start token
    assert x.shape == (2, P + T - 1, 32) and mask.tolist() == [[1] * (i + 1) + [0] * (P + T - 2 - i) for i in range(P + T - 1)]
    assert ours.caption_row(P + 5) == 5 and clipcap.caption_row(P + 5) == P + 5  # the next token's table row
    assert ours.cached_step(tokens[:, :1], P + 5)[1] is None  # one cached token sees everything before it
    _, mask = ours.cached_step(tokens[:, :2], P + 5)  # two cached tokens: the second sees the first
    assert mask.tolist() == [[1] * 9 + [0], [1] * 10]
    with pytest.raises(ValueError, match="max_len"):
        ours.cached_step(tokens[:, :1], P + ours.config.max_len)
    with pytest.raises(ValueError, match="build_decoder"):  # a config and a class that disagree on the layout
        CaptionDecoder(clipcap.config)


@pytest.mark.parametrize("gpt_prefix", [False, True])
def test_padded_keys_get_no_attention_in_both_layouts(gpt_prefix):
    """Right-padded rows: no position attends to a key after its row's last real token, in either layout."""
    decoder = build_decoder(tiny_config(gpt_prefix=gpt_prefix)).eval()
    tokens, clip_embed, patches = inputs(decoder.config, batch=2)
    lengths = torch.tensor([T, 2])
    weights = decoder(tokens, clip_embed, patches, lengths=lengths, return_attn=True).self_attn[0]  # (B, H, L, L)
    real_keys = weights.size(-1) - T + lengths  # the prefix's keys, then each row's real caption tokens
    assert real_keys.tolist() == ([3 + T, 5] if not gpt_prefix else [2 + T, 4])
    for row in range(2):
        assert (weights[row, ..., real_keys[row]:] == 0).all() and (weights[row, ..., : real_keys[row]].sum(-1) > 0.99).all()


def steps_with_cache(decoder, tokens, clip_embed, patches, cache, **kwargs):
    """The first call on tokens[:, :2] (prefix + 2 tokens), then one token per call: logits (B, T, V)."""
    steps = [decoder(tokens[:, :2], clip_embed, patches, cache=cache, **kwargs).logits]
    for t in range(2, tokens.size(1)):
        steps.append(decoder(tokens[:, t : t + 1], clip_embed, patches, cache=cache, **kwargs).logits)
    return torch.cat(steps, dim=1)


@pytest.mark.parametrize("overrides", [{}, {"gpt_prefix": True}, {"cross_attention": False}, {"prefix_len": 0}])
def test_a_fixed_length_cache_gives_the_logits_of_full_recomputation(overrides):
    """A fixed-length cache (every step attends over all its slots, the empty ones masked): same logits as
    recomputing the whole sequence, in both layouts, with patches hidden by a patch mask."""
    config = tiny_config(**overrides)
    plain = build_decoder(config).eval()
    decoder = CompiledDecoder(plain, compile=False)
    tokens, clip_embed, patches = inputs(config)
    keep = torch.rand(B, N) > 0.3
    keep[:, 0] = True
    full = plain(tokens, clip_embed, patches, patch_mask=keep).logits
    cache = decoder.new_cache()
    fixed = steps_with_cache(decoder, tokens, clip_embed, patches, cache, patch_mask=keep)
    assert_close(fixed, full[:, -fixed.size(1):])  # ClipCap's layout drops the start token's prediction
    assert cache.length == cache.position.item() and cache.layers[0][0].buffers[0].size(2) == cache.capacity
    small = decoder.new_cache(max_tokens=2)  # room for the prefix and two caption tokens only
    decoder(tokens[:, :2], clip_embed, patches, cache=small)
    with pytest.raises(ValueError, match="the fixed-length cache is full: it holds"):
        for t in range(2, T):
            decoder(tokens[:, t : t + 1], clip_embed, patches, cache=small)
    assert small.length == small.capacity == small.layers[0][0].buffers[0].size(2)  # filled to the last slot


def test_the_empty_slots_of_a_fixed_cache_are_masked():
    """Whatever the slots after the current position hold, a step's logits do not change; what a filled
    slot holds does change them (so the test can tell). Empty slots start as zeros: a matrix product with
    a masked, zero-weight slot still multiplies its value, and uninitialised memory may hold NaN."""
    config = tiny_config()
    decoder = CompiledDecoder(CaptionDecoder(config).eval(), compile=False)
    tokens, clip_embed, patches = inputs(config)
    cache = decoder.new_cache()
    steps_with_cache(decoder, tokens[:, :3], clip_embed, patches, cache)
    keys, values = cache.layers[0][0].buffers
    filled = cache.length
    assert not keys[:, :, filled:].any() and not values[:, :, filled:].any()

    def next_logits(write=None):
        saved = [tuple(x.clone() for x in self_cache.buffers) for self_cache, _ in cache.layers]
        if write is not None:
            for self_cache, _ in cache.layers:
                for buffer in self_cache.buffers:
                    buffer[:, :, write] = 1e4
        logits = decoder(tokens[:, 3:4], clip_embed, patches, cache=cache).logits
        for (self_cache, _), old in zip(cache.layers, saved):  # undo the step and the writes
            self_cache.buffers = old
        cache.length, cache.position[0] = filled, filled
        for self_cache, _ in cache.layers:
            self_cache.position = cache.position
        return logits

    clean = next_logits()
    assert_close(next_logits(write=slice(filled + 1, None)), clean)  # every slot after this step's own
    assert not torch.allclose(next_logits(write=slice(filled - 1, filled)), clean)  # the last filled slot


def test_compiled_steps_are_built_once_per_batch_size_and_give_the_same_logits():
    """CompiledDecoder: a whole caption's steps make one graph per batch size (static shapes: no recompiling
    as the cache fills, which is what failed on a growing cache), and the logits equal the eager decoder's.
    The graphs are run as traced (a backend that counts them); Inductor is exercised by generate.py --compile
    in tests/test_generate.py."""
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    config = tiny_config()
    eager = CaptionDecoder(config).eval()
    twin = CaptionDecoder(config).eval()
    twin.load_state_dict(eager.state_dict())
    compiled = CompiledDecoder(twin, backend=counting_backend)  # the same weights, its steps compiled
    for batch in (1, 3, 3, 5):
        tokens, clip_embed, patches = inputs(config, batch=batch, steps=config.max_len)
        with torch.no_grad():
            expected = steps_with_cache(eager, tokens, clip_embed, patches, eager.new_cache())
            got = steps_with_cache(compiled, tokens, clip_embed, patches, compiled.new_cache())  # views, as sample()'s
        assert_close(got, expected)
        if batch < 5:  # sample() feeds the last column of a growing tensor: a view whose strides change
            assert torch.equal(sample(compiled, clip_embed, patches, 1, 2), sample(eager, clip_embed, patches, 1, 2))
    assert len(graphs) == 3  # batch 1, batch 3 (twice, all 14 steps each, then sampling) and batch 5


def test_fused_and_explicit_decoders_agree():
    config = tiny_config()
    fused = CaptionDecoder(config).eval()
    explicit = CaptionDecoder(tiny_config(fused=False)).eval()
    explicit.load_state_dict(fused.state_dict())
    tokens, clip_embed, patches = inputs(config)
    assert_close(fused(tokens, clip_embed, patches).logits, explicit(tokens, clip_embed, patches).logits)


def test_output_head_is_tied_to_the_token_embedding():
    decoder = CaptionDecoder(tiny_config())
    names = [name for name, _ in decoder.named_parameters()]
    assert not any("head" in name for name in names)
    assert DecoderConfig().layers == 6 and DecoderConfig().width == 512 and DecoderConfig().heads == 8


def test_too_long_caption_is_refused():
    config = tiny_config()
    decoder = CaptionDecoder(config)
    tokens, clip_embed, patches = inputs(config, steps=config.max_len + 1)
    with pytest.raises(ValueError, match="max_len"):
        decoder(tokens, clip_embed, patches)
