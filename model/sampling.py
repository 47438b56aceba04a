"""Decoding: logit filters as pure per-row functions, a sampling loop, beam search, and the options
that choose between them.

Every function works on a batch; every row is treated on its own. `DecodingOptions` is the one place
a decoding setting is defined: generate.py's flags, the Python API's keywords and the web page's
controls are all built from its fields, and `decode` is the one place that picks the method.
"""

import math
import time
from dataclasses import dataclass

import torch

from model.hooks import plugged


def top_k_filter(logits, k):
    """Keep the k largest logits in each row, set the rest to -inf. logits: (B, V) -> (B, V)."""
    k = min(k, logits.size(-1))
    kth = logits.topk(k, dim=-1).values[:, -1:]  # (B, 1), the k-th largest in each row
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits, p):
    """Nucleus filter: keep, in each row, the smallest set of tokens whose probability reaches p.

    A token is kept if the probability mass of the tokens ranked above it is still below p.
    logits: (B, V) -> (B, V) with dropped tokens at -inf.
    """
    sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V) each
    probs = sorted_logits.softmax(dim=-1)  # (B, V)
    mass_before = probs.cumsum(dim=-1) - probs  # (B, V), mass of the tokens ranked strictly above
    keep_sorted = mass_before < p  # (B, V)
    keep_sorted[:, 0] = True  # the top token is always kept (also when p is below float32's smallest number)
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)  # back to vocabulary order, per row
    return logits.masked_fill(~keep, float("-inf"))


def repetition_penalty_filter(logits, tokens, penalty):
    """Make every token already in a row's caption less likely: its logit is divided by `penalty`
    when positive and multiplied by it when negative (CTRL's rule, as in Hugging Face's
    `repetition_penalty`). penalty 1.0 changes nothing; above 1 discourages repeats.

    logits: (B, V), tokens: (B, t) the row's caption so far (its start token included) -> (B, V).
    """
    seen = torch.zeros_like(logits, dtype=torch.bool).scatter(1, tokens, True)  # (B, V), per row
    penalised = torch.where(logits < 0, logits * penalty, logits / penalty)
    return torch.where(seen, penalised, logits)


def no_repeat_ngram_filter(logits, tokens, n):
    """Forbid any token that would repeat an n-gram already in the row's caption: if the last n - 1
    tokens occurred before, the tokens that followed them then are set to -inf (Hugging Face's
    `no_repeat_ngram_size`). n = 0 turns it off; n = 1 forbids every token already used.

    logits: (B, V), tokens: (B, t) the row's caption so far (its start token included) -> (B, V).
    """
    t = tokens.size(1)
    if n == 0 or t < n:
        return logits
    ngrams = tokens.unfold(1, n, 1)  # (B, t - n + 1, n), every n-gram of each row
    last = tokens[:, t - n + 1:]  # (B, n - 1), the start of the n-gram the next token would complete
    same_start = (ngrams[:, :, :-1] == last[:, None]).all(dim=-1)  # (B, t - n + 1)
    # count, per row and token, the earlier n-grams that began like this one and ended with that token
    count = torch.zeros_like(logits, dtype=torch.long).scatter_add(1, ngrams[:, :, -1], same_start.long())
    return logits.masked_fill(count > 0, float("-inf"))


def repetition_filters(logits, tokens, repetition_penalty=1.0, no_repeat_ngram_size=0):
    """Both repetition controls, applied to the raw logits before any temperature, top-k or top-p."""
    if repetition_penalty != 1.0:
        logits = repetition_penalty_filter(logits, tokens, repetition_penalty)
    return no_repeat_ngram_filter(logits, tokens, no_repeat_ngram_size)


class DecodingTimeout(TimeoutError):
    """Decoding passed its deadline (a server's time limit per request); the message says how long it ran."""


def check_deadline(deadline, started):
    """Raise DecodingTimeout when time.monotonic() has passed `deadline` (None: no limit)."""
    if deadline is not None and time.monotonic() > deadline:
        raise DecodingTimeout(f"decoding stopped after {time.monotonic() - started:.1f} s, past its time limit")


def next_token(logits, temperature=0.0, top_k=None, top_p=None, generator=None):
    """Pick one token per row. temperature 0 is greedy (argmax); otherwise sample from
    softmax(filtered logits / temperature). logits: (B, V) -> (B,)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature  # first the temperature, then the filters (as Hugging Face's generate)
    if top_k is not None:
        logits = (plugged("top_k_filter") or top_k_filter)(logits, top_k)  # a student's, if plugged in (model/hooks.py)
    if top_p is not None:
        logits = (plugged("top_p_filter") or top_p_filter)(logits, top_p)
    probs = logits.softmax(dim=-1)  # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)  # (B,)


@torch.no_grad()
def sample(decoder, clip_embed, patches, bos_id, eos_id, max_new_tokens=None, temperature=0.0,
           top_k=None, top_p=None, generator=None, patch_mask=None, use_cache=True,
           repetition_penalty=1.0, no_repeat_ngram_size=0, deadline=None):
    """Caption a batch token by token. Each row stops at its end token (later positions are filled
    with eos_id); the loop ends when every row has stopped or after max_new_tokens.

    clip_embed: (B, E), patches: (B, N, patch_dim) or None, patch_mask: (B, N) or None
    -> tokens (B, T_new), without the start token.
    use_cache=False recomputes the whole sequence every step (slow; kept to test the cache against).
    deadline: a time.monotonic() value; past it, the next step raises DecodingTimeout.
    """
    B, device, started = clip_embed.size(0), clip_embed.device, time.monotonic()
    longest = decoder.max_caption - 1  # new tokens after the start token
    max_new_tokens = min(max_new_tokens or longest, longest)
    tokens = torch.full((B, 1), bos_id, dtype=torch.long, device=device)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    cache = decoder.new_cache(1 + max_new_tokens) if use_cache else None  # start token + new ones
    for _ in range(max_new_tokens):
        check_deadline(deadline, started)
        inputs = tokens[:, -1:] if use_cache and cache.length > 0 else tokens  # (B, 1) or (B, t)
        logits = decoder(inputs, clip_embed, patches, patch_mask=patch_mask, cache=cache).logits[:, -1]  # (B, V)
        logits = repetition_filters(logits, tokens, repetition_penalty, no_repeat_ngram_size)
        new = next_token(logits, temperature, top_k, top_p, generator)  # (B,)
        new = new.masked_fill(done, eos_id)  # finished rows only repeat the end token
        tokens = torch.cat([tokens, new[:, None]], dim=1)  # (B, t + 1)
        done |= new == eos_id
        if done.all():
            break
    return tokens[:, 1:]


def best_beams(scores, K):
    """The K best continuations of each image among all its beams' tokens, best first.

    scores: (B, K_in, V), the score of each beam followed by each token -> (beam (B, K), token (B, K)):
    continuation j of image b extends beam[b, j] with token[b, j].
    """
    B, K_in, V = scores.shape
    best = scores.reshape(B, K_in * V).topk(K, dim=-1).indices  # (B, K) into the flattened K_in*V candidates
    return best // V, best % V  # (B, K) each: integer division on integer tensors


PENALTY_DECIDES_ALONE = 1e7  # |length_penalty| from which the length alone orders beams (see ranking_key)


def ranking_key(logp, length, length_penalty):
    """A key that orders beams as logp / length ** length_penalty does, for any finite penalty, in float32 without
    overflow (length ** 100 overflows it from length 3 on). logp: (B, K, ...) summed log-probabilities (<= 0),
    length: (B, K) tokens (>= 1) -> (B, K, ...), larger is better.

    With logp < 0, logp / length ** lp = -exp(log(-logp) - lp * log(length)), which grows as
    lp * log(length) - log(-logp) grows. Lengths are taken relative to each image's longest beam, so beams of one
    length compare by log-probability at full precision. Beyond +-1e7 the order no longer changes: log(-logp)
    spans under 200 in float32, while lengths up to 16,384 stay 1e7 * log((L + 1) / L) > 600 apart; the length
    decides, then the log-probability. logp = 0 ranks first (+inf), logp = -inf last (-inf).
    """
    lp = max(-PENALTY_DECIDES_ALONE, min(PENALTY_DECIDES_ALONE, length_penalty))
    relative = (length / length.amax(dim=1, keepdim=True)).log()  # (B, K), 0 for each image's longest beams
    relative = relative.view(*relative.shape, *[1] * (logp.dim() - 2))  # (B, K, 1...), against logp's shape
    return lp * relative - (-logp).log()  # (B, K, ...)


@torch.no_grad()
def beam_search(decoder, clip_embed, patches, bos_id, eos_id, beam_size=3, max_new_tokens=None,
                length_penalty=1.0, patch_mask=None, repetition_penalty=1.0, no_repeat_ngram_size=0,
                deadline=None):
    """Keep the beam_size best partial captions per image, ranked by log-probability / length ** length_penalty
    (compared through ranking_key, which cannot overflow).

    clip_embed: (B, E), patches: (B, N, patch_dim) or None, patch_mask: (B, N) or None
    -> (tokens (B, T_new), scores (B,)). deadline: as in sample().
    """
    B, K, device, started = clip_embed.size(0), beam_size, clip_embed.device, time.monotonic()
    longest = decoder.max_caption - 1  # new tokens after the start token
    max_new_tokens = min(max_new_tokens or longest, longest)
    rows = torch.arange(B, device=device).repeat_interleave(K)  # (B*K,), the image of each beam
    clip_embed = clip_embed[rows]  # (B*K, E)
    patches = patches[rows] if patches is not None else None  # (B*K, N, patch_dim)
    patch_mask = patch_mask[rows] if patch_mask is not None else None  # (B*K, N)
    tokens = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)  # (B*K, 1)
    logp = torch.zeros(B, K, device=device)  # summed log-probability of each beam
    logp[:, 1:] = float("-inf")  # all beams start identical: let only the first one expand at step one
    length = torch.zeros(B, K, device=device)  # tokens generated, the end token included
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    cache = decoder.new_cache(1 + max_new_tokens)  # start token + new ones
    V = decoder.config.vocab_size
    only_eos = torch.full((V,), float("-inf"), device=device)  # a finished beam's next-token log-probabilities
    only_eos[eos_id] = 0.0
    for _ in range(max_new_tokens):
        check_deadline(deadline, started)
        inputs = tokens[:, -1:] if cache.length else tokens  # (B*K, 1) after the first step
        logits = decoder(inputs, clip_embed, patches, patch_mask=patch_mask, cache=cache).logits
        logits = repetition_filters(logits[:, -1].float(), tokens, repetition_penalty, no_repeat_ngram_size)
        step = logits.log_softmax(dim=-1).view(B, K, -1)  # (B, K, V)
        step = torch.where(done[..., None], only_eos, step)  # a finished beam continues only with eos, for free
        candidates = logp[..., None] + step  # (B, K, V)
        new_length = length + (~done).float()  # (B, K)
        score = ranking_key(candidates, new_length, length_penalty)  # (B, K, V), ranked as candidates / length ** lp
        beam, token = (plugged("best_beams") or best_beams)(score, K)  # (B, K) each; a student's if plugged in
        logp = candidates[torch.arange(B, device=device)[:, None], beam, token]  # (B, K)
        length = new_length.gather(1, beam)
        done = done.gather(1, beam) | (token == eos_id)
        index = (torch.arange(B, device=device)[:, None] * K + beam).view(-1)  # (B*K,), surviving beams' rows
        cache.reorder(index, images_too=False)  # the surviving beams of an image all show that image
        tokens = torch.cat([tokens[index], token.view(-1, 1)], dim=1)  # (B*K, t + 1)
        if done.all():
            break
    length = length.clamp(min=1)  # a search that made no step
    best = ranking_key(logp, length, length_penalty).argmax(dim=-1)  # (B,)
    chosen = torch.arange(B, device=device) * K + best  # (B,)
    logp, length = logp.gather(1, best[:, None]).squeeze(1), length.gather(1, best[:, None]).squeeze(1)  # (B,) each
    final = torch.where((logp == 0) | logp.isinf(), logp, logp / length**length_penalty)  # never 0/0 or inf/inf
    return tokens[chosen, 1:], final  # (B, T_new), (B,): the score, which float32 may round to 0 or -inf


MIN_TEMPERATURE = 1e-3  # sampling this cold is already greedy in effect; much colder overflows float32
PENALTY_RANGE = (1e-3, 1e3)  # repetition penalties outside it overflow float32 logits (and decide nothing more)


@dataclass
class DecodingOptions:
    """How to turn the decoder's next-token distributions into captions."""

    beam: int = 1  # beam size; 1 with temperature 0 is greedy decoding
    length_penalty: float = 1.0  # beam search ranks captions by log-probability / length ** length_penalty
    temperature: float = 0.0  # 0: greedy or beam search; above 0: sample from softmax(logits / temperature)
    top_k: int = None  # sampling: draw only among the k most likely tokens
    top_p: float = None  # sampling: draw only in the smallest set of tokens whose probability reaches p
    num: int = 1  # captions per image (more than one needs sampling)
    max_len: int = None  # most new tokens per caption; default: as many as the model allows
    seed: int = 0  # seeds the sampling, so the same call gives the same captions
    repetition_penalty: float = 1.0  # above 1 makes words already in the caption less likely (1: off)
    no_repeat_ngram_size: int = 0  # n above 0: no sequence of n words appears twice in a caption (0: off)

    def __post_init__(self):
        """Refuse settings that are not numbers, contradict each other or would silently do nothing, in one
        sentence. Whatever passes decodes without error (no NaN, no overflow, a seed torch accepts)."""
        for name in ("length_penalty", "temperature", "top_p", "repetition_penalty"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, not {value}")
        sampling = self.temperature > 0
        problems = [
            (self.beam < 1, f"beam must be at least 1, not {self.beam}"),
            (self.temperature < 0, f"temperature must be 0 (greedy) or above, not {self.temperature}"),
            (0 < self.temperature < MIN_TEMPERATURE,  # logits / 1e-300 overflow to inf, and softmax gives NaN
             f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, not {self.temperature}"),
            (not 0 <= self.seed < 2**63, f"seed must be a whole number from 0 to 2**63 - 1, not {self.seed}"),
            (self.beam > 1 and sampling, "choose either beam search (beam > 1) or sampling (temperature > 0), not both"),
            (self.num < 1, f"num must be at least 1, not {self.num}"),
            (self.num > 1 and not sampling, "num > 1 needs sampling: set a temperature above 0 (e.g. 0.8)"),
            (self.top_k is not None and self.top_k < 1, f"top_k must be at least 1, not {self.top_k}"),
            (self.top_p is not None and not 0 < self.top_p <= 1, f"top_p must be in (0, 1], not {self.top_p}"),
            ((self.top_k is not None or self.top_p is not None) and not sampling,
             "top_k and top_p filter what is sampled: set a temperature above 0 (e.g. 0.8)"),
            (self.max_len is not None and self.max_len < 1, f"max_len must be at least 1, not {self.max_len}"),
            (not PENALTY_RANGE[0] <= self.repetition_penalty <= PENALTY_RANGE[1],
             f"repetition_penalty must be from {PENALTY_RANGE[0]} to {PENALTY_RANGE[1]} (1: off), not {self.repetition_penalty}"),
            (self.no_repeat_ngram_size < 0, f"no_repeat_ngram_size must be 0 (off) or more, not {self.no_repeat_ngram_size}"),
        ]
        for wrong, message in problems:
            if wrong:
                raise ValueError(message)


def decode(decoder, clip_embed, patches, bos_id, eos_id, options=DecodingOptions(), patch_mask=None,
           generator=None, deadline=None):
    """Caption a batch as `options` say: options.num runs of sampling, or one of greedy or beam search.

    clip_embed: (B, E), patches: (B, N, patch_dim) or None, patch_mask: (B, N) or None
    -> a list of options.num tensors (B, T_new) of token ids, without the start token.
    generator: for sampling; by default a new one seeded with options.seed.
    deadline: a time.monotonic() value; decoding past it raises DecodingTimeout.
    """
    common = dict(bos_id=bos_id, eos_id=eos_id, max_new_tokens=options.max_len, patch_mask=patch_mask,
                  deadline=deadline, repetition_penalty=options.repetition_penalty, no_repeat_ngram_size=options.no_repeat_ngram_size)
    if options.beam > 1:
        tokens, _ = beam_search(decoder, clip_embed, patches, beam_size=options.beam,
                                length_penalty=options.length_penalty, **common)
        return [tokens]
    if options.temperature > 0 and generator is None:
        generator = torch.Generator(device=clip_embed.device).manual_seed(options.seed)
    return [sample(decoder, clip_embed, patches, temperature=options.temperature, top_k=options.top_k,
                   top_p=options.top_p, generator=generator, **common) for _ in range(options.num)]
