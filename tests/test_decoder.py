"""The decoder block equals torch's, causality and the prefix hold, and the KV cache changes nothing."""

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from model.attention import causal_mask
from model.decoder import CaptionDecoder, DecoderBlock, DecoderConfig

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
