"""Repetition controls: exactly Hugging Face's rules, per row, and a caption that cannot stutter."""

import random

import pytest
import torch
from torch.testing import assert_close

from model.sampling import (DecodingOptions, beam_search, decode, no_repeat_ngram_filter,
                            repetition_penalty_filter, sample)
from tests.test_sampling import BOS, EOS, V, image_inputs, tiny_decoder


def banned_after(row, n):
    """Plain Python, the rule written out: the tokens that followed earlier occurrences of the
    row's last n - 1 tokens (Hugging Face's _get_ngrams / _get_generated_ngrams)."""
    followers = {}
    for i in range(len(row) - n + 1):
        followers.setdefault(tuple(row[i:i + n - 1]), set()).add(row[i + n - 1])
    return followers.get(tuple(row[len(row) - n + 1:]), set()) if n else set()


def penalised(logits, row, penalty):
    """Plain Python: CTRL's penalty on every token the row has used."""
    out = list(logits)
    for token in set(row):
        out[token] = out[token] * penalty if out[token] < 0 else out[token] / penalty
    return out


def repetitive_rows(batch, length, vocab, seed):
    """Token rows drawn from a few tokens, so n-grams recur, each row its own."""
    rng = random.Random(seed)
    return torch.tensor([[rng.choice(range(row % 3 + 2)) for _ in range(length)] for row in range(batch)])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_no_repeat_ngram_bans_exactly_what_the_rule_says_in_every_row(n):
    for seed in range(20):
        tokens = repetitive_rows(4, 7 + seed % 5, V, seed)
        logits = torch.randn(4, V, generator=torch.Generator().manual_seed(seed))
        filtered = no_repeat_ngram_filter(logits, tokens, n)
        for row in range(4):
            banned = {i for i in range(V) if filtered[row, i] == float("-inf")}
            assert banned == banned_after(tokens[row].tolist(), n), (n, seed, row)
            kept = [i for i in range(V) if i not in banned]
            assert_close(filtered[row, kept], logits[row, kept], rtol=0, atol=0)  # the rest untouched
    assert any(banned_after(repetitive_rows(4, 9, V, 0)[row].tolist(), n) for row in range(4))  # bans happen


def test_a_row_that_would_repeat_is_banned_and_the_other_rows_are_untouched():
    tokens = torch.tensor([[1, 5, 6, 7, 5],  # "5 6" occurred: after the last 5, 6 is banned for n = 2
                           [1, 8, 9, 10, 11]])  # no repeat anywhere: nothing changes
    logits = torch.randn(2, V)
    filtered = no_repeat_ngram_filter(logits, tokens, 2)
    assert (filtered[0] == float("-inf")).nonzero().flatten().tolist() == [6]
    assert torch.equal(filtered[1], logits[1])
    assert torch.equal(no_repeat_ngram_filter(logits, tokens, 0), logits)  # 0 is off
    assert torch.equal(no_repeat_ngram_filter(logits, tokens[:, :1], 2), logits)  # too short to repeat


def test_repetition_penalty_is_ctrls_rule_per_row_and_one_changes_nothing():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -4.0], [2.0, -1.0, 0.5, 3.0, -4.0]])
    tokens = torch.tensor([[0, 1, 1], [3, 4, 3]])
    assert repetition_penalty_filter(logits, tokens, 2.0).tolist() == [[1.0, -2.0, 0.5, 3.0, -4.0],
                                                                       [2.0, -1.0, 0.5, 1.5, -8.0]]
    assert torch.equal(repetition_penalty_filter(logits, tokens, 1.0), logits)
    for seed in range(10):
        tokens = repetitive_rows(3, 6, V, seed)
        logits = torch.randn(3, V, generator=torch.Generator().manual_seed(seed))
        for penalty in (0.7, 1.3, 2.0):
            got = repetition_penalty_filter(logits, tokens, penalty)
            for row in range(3):
                assert_close(got[row].tolist(), penalised(logits[row].tolist(), tokens[row].tolist(), penalty))


def test_equals_hugging_face_logits_processors():
    logits_process = pytest.importorskip("transformers.generation.logits_process",
                                         reason="transformers is not installed (requirements-dev.txt)")
    for seed in range(10):
        tokens = repetitive_rows(4, 8, V, seed)
        logits = torch.randn(4, V, generator=torch.Generator().manual_seed(seed))
        for n in (1, 2, 3):
            theirs = logits_process.NoRepeatNGramLogitsProcessor(n)(tokens, logits.clone())
            assert torch.equal(no_repeat_ngram_filter(logits, tokens, n), theirs)
        for penalty in (0.5, 1.2, 3.0):
            theirs = logits_process.RepetitionPenaltyLogitsProcessor(penalty)(tokens, logits.clone())
            assert_close(repetition_penalty_filter(logits, tokens, penalty), theirs, rtol=0, atol=0)


def ngram_repeats(caption, n):
    ngrams = [tuple(caption[i:i + n]) for i in range(len(caption) - n + 1)]
    return len(ngrams) - len(set(ngrams))


@pytest.mark.parametrize("method", ["greedy", "sampled", "beam"])
def test_captions_with_no_repeat_ngram_never_repeat_and_without_it_do(method):
    torch.manual_seed(0)
    decoder = tiny_decoder(vocab_size=6)  # 6 tokens and 11 steps: an untrained model must repeat
    clip_embed, patches = image_inputs(6)
    options = dict(greedy={}, sampled=dict(temperature=1.0), beam=dict(beam=3))[method]
    eos = 5

    def captions(**repetition):
        tokens = decode(decoder, clip_embed, patches, BOS, eos, DecodingOptions(**options, **repetition))[0]
        rows = [[BOS] + row.tolist() for row in tokens]
        return [row[:row.index(eos)] if eos in row else row for row in rows]

    assert sum(ngram_repeats(c, 2) for c in captions()) > 0  # the test has something to prevent
    assert all(ngram_repeats(c, 2) == 0 for c in captions(no_repeat_ngram_size=2))
    assert all(ngram_repeats(c, 1) == 0 for c in captions(no_repeat_ngram_size=1))


def test_repetition_controls_keep_the_cache_equal_to_recomputation():
    torch.manual_seed(0)
    decoder = tiny_decoder()
    clip_embed, patches = image_inputs(4)
    common = dict(bos_id=BOS, eos_id=EOS, repetition_penalty=1.5, no_repeat_ngram_size=2)
    for kwargs in (dict(), dict(temperature=0.9, top_k=10)):
        runs = [sample(decoder, clip_embed, patches, use_cache=cache, **common, **kwargs,
                       generator=torch.Generator().manual_seed(3)) for cache in (True, False)]
        assert torch.equal(runs[0], runs[1])
    plain = sample(decoder, clip_embed, patches, BOS, EOS)
    assert not torch.equal(plain, sample(decoder, clip_embed, patches, **common))  # the controls act


def test_penalty_one_and_size_zero_leave_every_method_unchanged():
    torch.manual_seed(0)
    decoder = tiny_decoder()
    clip_embed, patches = image_inputs(3)
    off = dict(repetition_penalty=1.0, no_repeat_ngram_size=0)
    assert torch.equal(sample(decoder, clip_embed, patches, BOS, EOS),
                       sample(decoder, clip_embed, patches, BOS, EOS, **off))
    assert torch.equal(beam_search(decoder, clip_embed, patches, BOS, EOS)[0],
                       beam_search(decoder, clip_embed, patches, BOS, EOS, **off)[0])


def test_options_refuse_impossible_repetition_settings():
    with pytest.raises(ValueError, match="repetition_penalty must be from 0.001 to 1000.0"):
        DecodingOptions(repetition_penalty=0)
    with pytest.raises(ValueError, match="no_repeat_ngram_size must be 0"):
        DecodingOptions(no_repeat_ngram_size=-1)
