"""Sampling filters are exact and per row; cache, top-k 1 and beam 1 all reduce to greedy."""

import time

import pytest
import torch
from torch.testing import assert_close

from model.compiled import CompiledDecoder
from model.decoder import CaptionDecoder, DecoderConfig, KVCache
from model.sampling import (MIN_TEMPERATURE, PENALTY_RANGE, DecodingOptions, DecodingTimeout, beam_search, decode, next_token, sample,
                            top_k_filter, top_p_filter)

V, BOS, EOS = 30, 1, 2


def tiny_decoder(**overrides):
    fields = dict(vocab_size=V, max_len=12, width=32, layers=2, heads=4, prefix_len=2, clip_dim=16,
                  patch_dim=16, dropout=0.0)
    fields.update(overrides)
    return CaptionDecoder(DecoderConfig(**fields)).eval()


def image_inputs(batch):
    return torch.randn(batch, 16), torch.randn(batch, 5, 16)


def smallest_nucleus(probs, p):
    """Brute force: the fewest top tokens whose probability reaches p."""
    ranked = sorted(range(len(probs)), key=lambda i: -probs[i])
    total, kept = 0.0, set()
    for i in ranked:
        kept.add(i)
        total += probs[i]
        if total >= p:
            break
    return kept


def test_top_p_keeps_exactly_the_smallest_set_in_every_row():
    logits = torch.stack([
        torch.tensor([5.0, 1.0, 0.5, 0.1, -1.0, -2.0]),  # peaked: the top token alone reaches p
        torch.zeros(6),  # flat: needs most tokens
        torch.tensor([-2.0, 3.0, -1.0, 2.9, 0.0, 1.0]),  # largest tokens not at the front
        torch.tensor([0.0, 0.0, 3.0, -5.0, 1.0, 2.0]),
    ])
    for p in [0.3, 0.5, 0.8, 0.95]:
        filtered = top_p_filter(logits, p)
        probs = logits.softmax(-1)
        for row in range(len(logits)):
            kept = {i for i in range(6) if filtered[row, i] > float("-inf")}
            assert kept == smallest_nucleus(probs[row].tolist(), p), (p, row)
            assert_close(filtered[row, list(kept)], logits[row, list(kept)])  # kept logits untouched
    sizes = {(top_p_filter(logits, 0.8) > float("-inf")).sum(-1)[row].item() for row in range(4)}
    assert len(sizes) > 1  # the rows really differ, so one row's answer cannot stand in for another's


def test_top_k_is_per_row_and_guards_k_larger_than_vocabulary():
    logits = torch.tensor([[1.0, 4.0, 3.0, 2.0], [4.0, 3.0, 2.0, 1.0]])
    kept = top_k_filter(logits, 2) > float("-inf")
    assert kept.tolist() == [[False, True, True, False], [True, True, False, False]]
    assert_close(top_k_filter(logits, 100), logits)


def test_temperature_zero_is_argmax_and_top_k_one_is_argmax():
    logits = torch.randn(8, V)
    assert torch.equal(next_token(logits), logits.argmax(-1))
    assert torch.equal(next_token(logits, temperature=1.0, top_k=1), logits.argmax(-1))


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([[0.7, 0.2, 0.1, 0.0]]).clamp(min=1e-9)).expand(20000, 4)
    counts = torch.bincount(next_token(logits, temperature=1.0), minlength=4) / 20000
    assert_close(counts, torch.tensor([0.7, 0.2, 0.1, 0.0]), atol=0.02, rtol=0)
    nucleus = torch.bincount(next_token(logits, temperature=1.0, top_p=0.75), minlength=4) / 20000
    assert_close(nucleus, torch.tensor([0.7 / 0.9, 0.2 / 0.9, 0.0, 0.0]), atol=0.02, rtol=0)


@pytest.mark.parametrize("batch", [1, 5])
def test_cache_equals_recomputation_greedy_and_sampled(batch):
    decoder = tiny_decoder()
    clip_embed, patches = image_inputs(batch)
    common = dict(bos_id=BOS, eos_id=EOS, max_new_tokens=10)
    assert torch.equal(sample(decoder, clip_embed, patches, **common),
                       sample(decoder, clip_embed, patches, use_cache=False, **common))
    sampled = [sample(decoder, clip_embed, patches, temperature=1.0, top_p=0.9, use_cache=use_cache,
                        generator=torch.Generator().manual_seed(7), **common) for use_cache in (True, False)]
    assert torch.equal(*sampled)


def with_fixed_caches(decoder):
    """The same decoder with fixed-length caches (model/compiled.py), its steps not compiled."""
    return CompiledDecoder(decoder, compile=False)


def test_a_fixed_length_cache_decodes_as_the_growing_one():
    """Greedy, sampled and beam search (which reorders the cache's rows every step: some step here keeps a
    beam that was not in its row) give the same tokens with fixed-length caches."""
    decoder = tiny_decoder()
    with torch.no_grad():
        decoder.token_embedding.weight *= 20  # confident logits: no near-ties for rounding to flip
    fixed, (clip_embed, patches) = with_fixed_caches(decoder), image_inputs(4)
    common = dict(bos_id=BOS, eos_id=EOS)
    for options in (dict(), dict(temperature=1.0, top_k=5), dict(max_new_tokens=2)):  # a cache shorter than 2x the prefix
        runs = [sample(d, clip_embed, patches, generator=torch.Generator().manual_seed(3), **common, **options)
                for d in (decoder, fixed)]
        assert torch.equal(*runs), options
    reorders = []
    real_reorder = KVCache.reorder
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KVCache, "reorder", lambda self, index, **kw: (reorders.append(index.clone()),
                                                                   real_reorder(self, index, **kw)))
        (growing, growing_scores), (fixed_tokens, fixed_scores) = (
            beam_search(d, clip_embed, patches, beam_size=3, **common) for d in (decoder, fixed))
    assert torch.equal(growing, fixed_tokens)
    assert_close(growing_scores, fixed_scores)
    assert any(not torch.equal(index, torch.arange(len(index))) for index in reorders[1:])


def test_top_k_one_equals_greedy_in_sample():
    decoder = tiny_decoder()
    clip_embed, patches = image_inputs(4)
    greedy = sample(decoder, clip_embed, patches, BOS, EOS)
    assert torch.equal(sample(decoder, clip_embed, patches, BOS, EOS, temperature=0.8, top_k=1), greedy)


def test_rows_stop_at_their_end_token():
    decoder = tiny_decoder()
    with torch.no_grad():
        decoder.token_embedding.weight[EOS] *= 8  # make the end token likely, so rows stop at different times
    clip_embed, patches = image_inputs(16)
    out = sample(decoder, clip_embed, patches, BOS, EOS, temperature=1.0,
                   generator=torch.Generator().manual_seed(0))
    ends = [(row == EOS).nonzero()[0].item() for row in out if (row == EOS).any()]
    assert len(set(ends)) > 1
    for row in out:
        if (row == EOS).any():
            first = (row == EOS).nonzero()[0].item()
            assert (row[first:] == EOS).all()
    assert out.size(1) <= decoder.config.max_len - 1


@pytest.mark.parametrize("batch", [1, 3])
def test_beam_one_equals_greedy(batch):
    decoder = tiny_decoder()
    clip_embed, patches = image_inputs(batch)
    greedy = sample(decoder, clip_embed, patches, BOS, EOS)
    beam, _ = beam_search(decoder, clip_embed, patches, BOS, EOS, beam_size=1)
    assert torch.equal(beam, greedy)


def sequence_score(decoder, clip_embed, patches, tokens, length_penalty):
    """Log-probability of `tokens` (up to and including the first EOS) / length ** length_penalty."""
    inputs = torch.cat([torch.tensor([[BOS]]), tokens[None]], dim=1)
    with torch.no_grad():
        logp = decoder(inputs[:, :-1], clip_embed[None], patches[None]).logits.log_softmax(-1)[0]
    n = (tokens == EOS).nonzero()[0].item() + 1 if (tokens == EOS).any() else len(tokens)
    total = logp[torch.arange(n), tokens[:n]].sum()
    return total / n**length_penalty


def test_beam_search_returns_its_hypothesis_with_the_model_score():
    decoder = tiny_decoder()
    clip_embed, patches = image_inputs(3)
    tokens, scores = beam_search(decoder, clip_embed, patches, BOS, EOS, beam_size=4, length_penalty=0.7)
    for b in range(3):
        assert_close(scores[b], sequence_score(decoder, clip_embed[b], patches[b], tokens[b], 0.7))


def test_a_beam_as_wide_as_the_search_space_finds_the_best_sequence():
    decoder = tiny_decoder(vocab_size=4, max_len=4)  # 3 new tokens from 4 symbols: 64 sequences at most
    clip_embed, patches = image_inputs(2)
    tokens, scores = beam_search(decoder, clip_embed, patches, BOS, EOS, beam_size=64, length_penalty=1.0)
    for b in range(2):
        every = torch.cartesian_prod(*[torch.arange(4)] * 3)  # (64, 3)
        best = max(sequence_score(decoder, clip_embed[b], patches[b], seq, 1.0).item() for seq in every)
        assert_close(scores[b].item(), best, rtol=1e-5, atol=1e-5)


def every_sequence_ranked(decoder, clip_embed, patches, length_penalty):
    """Brute force: all 64 sequences of 3 tokens from 4 symbols, best first by log-probability / length **
    length_penalty (length: up to and including the first EOS), each cut after its EOS. The score is computed in
    float64 where it fits (|length_penalty| <= 100); beyond, by the order it takes without limit: the length first
    (the longer the better for a positive penalty), then the log-probability."""
    every = torch.cartesian_prod(*[torch.arange(4)] * 3)  # (64, 3)
    inputs = torch.cat([torch.full((64, 1), BOS), every[:, :-1]], dim=1)  # (64, 3)
    with torch.no_grad():
        logp = decoder(inputs, clip_embed.expand(64, -1), patches.expand(64, -1, -1)).logits.log_softmax(-1)
    logp = logp.double().gather(2, every[..., None])[..., 0]  # (64, 3)
    ended = (every == EOS).long().cumsum(1)  # (64, 3): 1 from the first EOS on
    counted = (ended - (every == EOS).long()) == 0  # (64, 3): positions up to and including the first EOS
    total, n = (logp * counted).sum(1), counted.sum(1)  # (64,) each
    if abs(length_penalty) <= 100:
        keys = [(t / float(k) ** length_penalty,) for t, k in zip(total.tolist(), n.tolist())]
    else:
        keys = [(k if length_penalty > 0 else -k, t) for t, k in zip(total.tolist(), n.tolist())]
    order = sorted(range(64), key=lambda i: keys[i], reverse=True)
    return [every[i, : n[i]].tolist() for i in order]


@pytest.mark.parametrize("length_penalty", [100.0, -100.0, 1e9, -1e9, 1.7e308])
def test_extreme_length_penalties_still_find_the_best_sequence(length_penalty):
    """length ** length_penalty overflows float32 from about +-32 (3 ** 100 is 5e47): candidates scored 0 or -inf
    alike, and the search took the first of the ties, the <pad> token (issue 34, point 13). Beams are now ranked
    without that overflow: a beam as wide as the search space finds what brute force finds."""
    decoder = tiny_decoder(vocab_size=4, max_len=4)  # 3 new tokens from 4 symbols: 64 sequences at most
    clip_embed, patches = image_inputs(3)
    tokens, _ = beam_search(decoder, clip_embed, patches, BOS, EOS, beam_size=64, length_penalty=length_penalty)
    for b in range(3):
        best = every_sequence_ranked(decoder, clip_embed[b : b + 1], patches[b : b + 1], length_penalty)[0]
        assert tokens[b, : len(best)].tolist() == best, (b, tokens[b], best)
        assert (tokens[b, len(best) :] == EOS).all()  # a finished caption continues with its end token


HOSTILE_OPTIONS = [  # each crashed decoding (NaN probabilities, float overflow, a seed torch refuses) or did nothing
    (dict(temperature=float("nan")), "temperature must be a finite number"),
    (dict(temperature=float("inf")), "temperature must be a finite number"),
    (dict(temperature=1e-300), "temperature must be 0 (greedy) or at least 0.001"),
    (dict(seed=10**30), "seed must be a whole number from 0 to 2**63 - 1"),
    (dict(seed=-1), "seed must be a whole number"),
    (dict(temperature=1.0, top_p=float("nan")), "top_p must be a finite number"),
    (dict(beam=2, length_penalty=float("nan")), "length_penalty must be a finite number"),
    (dict(repetition_penalty=float("nan")), "repetition_penalty must be a finite number"),
    (dict(repetition_penalty=float("inf")), "repetition_penalty must be a finite number"),
    (dict(repetition_penalty=1e-9), "repetition_penalty must be from 0.001 to 1000.0"),
    (dict(repetition_penalty=1e9), "repetition_penalty must be from 0.001 to 1000.0"),
]


@pytest.mark.parametrize("values, message", HOSTILE_OPTIONS, ids=[str(v) for v, _ in HOSTILE_OPTIONS])
def test_options_that_cannot_decode_are_refused_in_one_sentence(values, message):
    with pytest.raises(ValueError, match=message.replace("*", r"\*").replace("(", r"\(").replace(")", r"\)")):
        DecodingOptions(**values)


def test_the_extremes_that_pass_decode_without_error():
    decoder, (clip_embed, patches) = tiny_decoder(), image_inputs(3)
    for values in [dict(temperature=MIN_TEMPERATURE, seed=2**63 - 1), dict(temperature=1e6, top_p=1e-300, top_k=10**9),
                   dict(temperature=1, repetition_penalty=PENALTY_RANGE[0]), dict(temperature=1, repetition_penalty=PENALTY_RANGE[1]),
                   dict(beam=3, length_penalty=-1e9, repetition_penalty=PENALTY_RANGE[0], max_len=10**9, no_repeat_ngram_size=99)]:
        runs = decode(decoder, clip_embed, patches, BOS, EOS, DecodingOptions(**values))
        assert runs[0].shape[0] == 3 and (runs[0] >= 0).all() and (runs[0] < V).all(), values


def test_decoding_past_its_deadline_stops_with_a_timeout():
    decoder, (clip_embed, patches) = tiny_decoder(), image_inputs(2)
    for options in [DecodingOptions(), DecodingOptions(beam=3)]:
        with pytest.raises(DecodingTimeout, match="past its time limit"):
            decode(decoder, clip_embed, patches, BOS, EOS, options, deadline=time.monotonic() - 1)
        runs = decode(decoder, clip_embed, patches, BOS, EOS, options, deadline=time.monotonic() + 60)
        assert runs[0].shape[0] == 2
