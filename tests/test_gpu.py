"""What only a CUDA GPU can show: the fused attention kernels, mixed precision and torch.compile with Inductor,
each against the explicit float32 path. Skipped, with one line, on a machine without CUDA (CI's)."""

import pytest
import torch

from model.attention import MultiHeadAttention, causal_mask
from tests.test_train import TINY, two_equal_tiny_models_and_a_batch
from training.step import autocast_dtype, train_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def on_gpu(models, batch):
    inputs, tokens, targets, lengths = batch
    return ([m.cuda() for m in models],
            ({k: v.cuda() for k, v in inputs.items()}, tokens.cuda(), targets.cuda(), lengths.cuda()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_attention_on_the_gpu_equals_the_explicit_path(dtype):
    """F.scaled_dot_product_attention picks a GPU kernel (flash or memory-efficient) that never forms the
    (T, S) score matrix; it must give the explicit softmax(q k^T / sqrt(D)) v within the dtype's rounding."""
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bfloat16")
    torch.manual_seed(0)
    fused = MultiHeadAttention(64, 4).cuda().to(dtype)
    explicit = MultiHeadAttention(64, 4, fused=False).cuda().to(dtype)
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, 17, 64, device="cuda", dtype=dtype)
    for mask in (None, causal_mask(17, device="cuda")):
        tolerance = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(fused(x, mask=mask)[0], explicit(x, mask=mask)[0], **tolerance)


def test_mixed_precision_steps_stay_close_to_float32():
    """One step in the GPU's mixed precision (bfloat16, or float16 with a gradient scaler on a GPU without
    it) against one in float32: a finite loss within 1% and weights within a small step of each other."""
    models, batch = on_gpu(*two_equal_tiny_models_and_a_batch())
    dtype = autocast_dtype(torch.device("cuda"))
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None
    losses = []
    for model, autocast, scaler in zip(models, (None, dtype), (None, scaler)):
        params = list(model.parameters())
        losses.append(train_step(model, torch.optim.SGD(params, lr=0.1), params, batch, lr=0.1,
                                 autocast=autocast, scaler=scaler))
    assert torch.isfinite(losses[1])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-2, atol=1e-2)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-2, atol=1e-3, msg=name)


def test_float16_with_a_scaler_trains_without_nan_on_the_gpu(tmp_path, monkeypatch):
    """What a Colab T4 runs (faked on a GPU that has bfloat16): a short run of train.py in float16 ends
    with finite losses."""
    import json

    import train

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    train.main(TINY + ["--epochs", "1", "--device", "cuda", "--out", str(tmp_path)])
    losses = [json.loads(line).get("train_loss") for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(loss is None or loss == loss and loss < 10 for loss in losses)  # no NaN, no blow-up


def test_compiled_training_steps_equal_eager_ones_on_the_gpu():
    """torch.compile with Inductor (fused GPU kernels) against eager, two float32 steps."""
    models, batch = on_gpu(*two_equal_tiny_models_and_a_batch())
    for model, compiled in zip(models, (False, True)):
        params = list(model.parameters())
        optimizer, stepped = torch.optim.SGD(params, lr=1.0), torch.compile(model) if compiled else model
        for _ in range(2):
            train_step(stepped, optimizer, params, batch, lr=1.0)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5, msg=name)


def test_compiled_decoding_steps_equal_eager_ones_on_the_gpu():
    """CompiledDecoder on a GPU (Inductor's GPU kernels over a fixed-length cache): greedy and beam tokens
    equal the eager decoder's."""
    from model.compiled import CompiledDecoder
    from model.decoder import CaptionDecoder, DecoderConfig
    from model.sampling import beam_search, sample

    torch.manual_seed(0)
    config = DecoderConfig(vocab_size=50, max_len=16, width=64, layers=2, heads=4, prefix_len=3, clip_dim=24,
                           patch_dim=20, dropout=0.0)
    eager = CaptionDecoder(config).cuda().eval()
    with torch.no_grad():
        eager.token_embedding.weight *= 20  # confident logits: no near-ties for rounding to flip
    twin = CaptionDecoder(config).cuda().eval()
    twin.load_state_dict(eager.state_dict())
    compiled = CompiledDecoder(twin)  # the same weights, its steps compiled
    clip_embed, patches = torch.randn(4, 24, device="cuda"), torch.randn(4, 9, 20, device="cuda")
    assert torch.equal(sample(compiled, clip_embed, patches, 1, 2), sample(eager, clip_embed, patches, 1, 2))
    assert torch.equal(beam_search(compiled, clip_embed, patches, 1, 2)[0], beam_search(eager, clip_embed, patches, 1, 2)[0])
