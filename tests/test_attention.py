"""Our attention equals torch's, on both paths, with masks that really mask."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.testing import assert_close

from model.attention import AttentionCache, MultiHeadAttention, attention, causal_mask, padding_mask

B, T, S, C, H = 3, 5, 7, 16, 4


def copied_pair(fused):
    ours = MultiHeadAttention(C, H, fused=fused)
    ref = nn.MultiheadAttention(C, H, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj_weight)
        ref.in_proj_bias.copy_(torch.randn(3 * C))  # non-zero biases, so a bias mix-up would show
        ours.in_proj_bias.copy_(ref.in_proj_bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    return ours, ref


def test_masks_are_not_trivial():
    causal = causal_mask(4)
    assert causal.tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]]
    assert causal_mask(2, 4).tolist() == [[1, 1, 1, 0], [1, 1, 1, 1]]  # the last 2 of 4 positions
    pad = padding_mask(torch.tensor([2, 4]), 4)
    assert pad.shape == (2, 1, 1, 4)
    assert pad[:, 0, 0].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


@pytest.mark.parametrize("fused", [False, True])
def test_self_attention_equals_torch_with_causal_and_padding_masks(fused):
    ours, ref = copied_pair(fused)
    x = torch.randn(B, T, C)
    lengths = torch.tensor([5, 3, 2])
    mask = causal_mask(T) & padding_mask(lengths, T)  # (B, 1, T, T)
    assert not mask.all() and mask.any()
    out, _ = ours(x, mask=mask)
    # torch's boolean attn_mask means the opposite: True = NOT allowed; and it wants (B*H, T, S)
    torch_mask = ~mask.expand(B, H, T, T).reshape(B * H, T, T)
    expected, _ = ref(x, x, x, attn_mask=torch_mask, need_weights=False)
    assert_close(out, expected)


@pytest.mark.parametrize("fused", [False, True])
def test_cross_attention_equals_torch_with_padding_mask(fused):
    ours, ref = copied_pair(fused)
    x, context = torch.randn(B, T, C), torch.randn(B, S, C)
    lengths = torch.tensor([7, 4, 1])
    out, _ = ours(x, context, mask=padding_mask(lengths, S))
    expected, _ = ref(x, context, context, key_padding_mask=~padding_mask(lengths, S)[:, 0, 0], need_weights=False)
    assert_close(out, expected)


def test_weights_equal_torch_and_are_zero_on_masked_keys():
    ours, ref = copied_pair(fused=True)
    x = torch.randn(B, T, C)
    mask = causal_mask(T) & padding_mask(torch.tensor([5, 3, 2]), T)
    out, weights = ours(x, mask=mask, return_attn=True)  # weights force the explicit path
    assert weights.shape == (B, H, T, T)
    torch_mask = ~mask.expand(B, H, T, T).reshape(B * H, T, T)
    expected_out, expected_w = ref(x, x, x, attn_mask=torch_mask, average_attn_weights=False)
    assert_close(out, expected_out)
    assert_close(weights, expected_w)
    allowed = mask.expand_as(weights)
    assert (weights[~allowed] == 0).all()
    assert_close(weights.sum(-1), torch.ones(B, H, T))


def test_explicit_function_equals_sdpa():
    q, k, v = torch.randn(B, H, T, 8), torch.randn(B, H, S, 8), torch.randn(B, H, S, 8)
    mask = torch.rand(B, 1, T, S) > 0.4
    mask[..., 0] = True  # every query keeps at least one key
    out, weights = attention(q, k, v, mask)
    assert_close(out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert (weights[~mask.expand_as(weights)] == 0).all()


def test_fused_and_explicit_paths_agree_with_gradients():
    explicit = MultiHeadAttention(C, H, fused=False)
    fused = MultiHeadAttention(C, H, fused=True)
    fused.load_state_dict(explicit.state_dict())
    x = torch.randn(B, T, C, requires_grad=True)
    mask = causal_mask(T)
    a, _ = explicit(x, mask=mask)
    g_explicit = torch.autograd.grad(a.square().sum(), x)[0]
    b, _ = fused(x, mask=mask)
    g_fused = torch.autograd.grad(b.square().sum(), x)[0]
    assert_close(a, b)
    assert_close(g_explicit, g_fused)


def test_masked_keys_do_not_change_the_output():
    ours, _ = copied_pair(fused=False)
    x, context = torch.randn(B, T, C), torch.randn(B, S, C)
    lengths = torch.tensor([3, 3, 3])
    mask = padding_mask(lengths, S)
    out, _ = ours(x, context, mask=mask)
    changed = context.clone()
    changed[:, 3:] = torch.randn(B, S - 3, C) * 100  # garbage in the masked keys
    out2, _ = ours(x, changed, mask=mask)
    assert_close(out, out2)
    out3, _ = ours(x, changed)  # without the mask the garbage does matter
    assert not torch.allclose(out, out3)


@pytest.mark.parametrize("capacity", [0, 3, 16])
def test_the_cache_is_written_in_place_and_grows_when_full(capacity):
    """Step-by-step self-attention through an AttentionCache equals one causal pass, whether the
    buffers hold every position from the start (written in place, never reallocated) or must grow."""
    torch.manual_seed(0)
    mha = MultiHeadAttention(16, 2).eval()
    x = torch.randn(3, 9, 16)
    full, _ = mha(x, mask=causal_mask(9))
    cache = AttentionCache(capacity=capacity)
    steps = [mha(x[:, :2], mask=causal_mask(2), cache=cache)[0]]
    first_buffer = cache.buffers[0].data_ptr()
    for t in range(2, 9):
        steps.append(mha(x[:, t : t + 1], cache=cache)[0])
    assert_close(torch.cat(steps, dim=1), full)
    assert cache.k.shape == (3, 2, 9, 8)
    assert (cache.buffers[0].data_ptr() == first_buffer) == (capacity >= 9)  # reallocated only when full
