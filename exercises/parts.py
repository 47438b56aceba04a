"""The parts of cases and mistakes that need nothing of the model: how a case calls the student's function
(`run`), and the tests of what came back (`seen`). They live here, apart from the references, so that a
student pack (exercises/pack.py), which holds no model/, can make them again from their names.

Each part is made by a factory marked @part; what it makes remembers its factory and parameters
(`.spec`), and `make(spec)` makes it again.
"""

import functools

import torch

PARTS = {}  # factory name -> factory


def part(factory):
    """Mark a factory whose products can be written down as (name, parameters) and made again."""

    @functools.wraps(factory)
    def make(*params):
        product = factory(*params)
        product.spec = [factory.__name__, list(params)]
        return product

    PARTS[factory.__name__] = make
    return make


def make(spec):
    """The part a spec names, made again."""
    name, params = spec
    return PARTS[name](*params)


# ---------------------------------------------------------------------------------------------- how cases call


@part
def decode_in_steps(steps):
    """A case that calls the function as a decoder does: the prompt (prefix and start token) at once, then
    the next positions a few at a time, feeding back the cache it returned. -> (every output, last cache)."""

    def run(function, sequence):
        q, k, v = sequence  # (B, H, L, D) each: every position's query, key and value
        outs, past, start = [], None, 0
        for size in steps:
            end = start + size
            out, past = function(q[:, :, start:end], k[:, :, start:end], v[:, :, start:end], past)
            outs.append(out)
            start = end
        return torch.cat(outs, dim=2), past  # (B, H, L, D), the cache after the last step

    return run


# ---------------------------------------------------------------------------------------------- tests of what came back


@part
def not_boolean():
    return lambda args, got, expected, student: isinstance(got, torch.Tensor) and got.dtype != torch.bool


@part
def two_dimensional():
    return lambda args, got, expected, student: isinstance(got, torch.Tensor) and got.dim() == 2


def cache_size(got):
    """Positions in the cache a student's run returned, or None if there is none."""
    try:
        return got[1][0].size(2)
    except (TypeError, AttributeError, IndexError):
        return None


@part
def cache_empty():
    return lambda args, got, expected, student: isinstance(got, tuple) and len(got) == 2 and got[1] is None


@part
def cache_forgets_prompt(prompt):
    """The cache after the last step holds the newest steps but not the first call's `prompt` positions."""
    return lambda args, got, expected, student: cache_size(got) == args[1].size(2) - prompt + 1


@part
def cache_keeps_newest():
    return lambda args, got, expected, student: cache_size(got) is not None and cache_size(got) < 3


@part
def probabilities():
    return lambda args, got, expected, student: isinstance(got, torch.Tensor) and got.shape == expected.shape and bool(
        torch.isfinite(got).all() and (got >= 0).all() and torch.allclose(got.sum(-1), torch.ones(got.size(0))))


@part
def zero_not_minus_infinity():
    return lambda args, got, expected, student: isinstance(got, torch.Tensor) and got.shape == expected.shape \
        and bool(((got == 0) & torch.isinf(expected)).any())


@part
def rows_alone_are_right():
    """The student's filter is right on each row alone but not on the batch: rows are mixed. (A filter
    treats each row by itself, so the expected batch's row i is the right answer for row i alone.)"""

    def seen(args, got, expected, student):
        logits, rest = args[0], args[1:]
        alone = [student(logits[i : i + 1].clone(), *rest) for i in range(logits.size(0))]
        return all(isinstance(a, torch.Tensor) and torch.equal(a, expected[i : i + 1]) for i, a in enumerate(alone))

    return seen


@part
def float_beam_index():
    return lambda args, got, expected, student: isinstance(got, tuple) and isinstance(got[0], torch.Tensor) \
        and got[0].is_floating_point()


# ---------------------------------------------------------------------------------------------- the captioner's paths

PATHS = {  # path -> what it is, in words
    "training_loss": "a training step's loss (dropout on, rows of lengths 7, 4 and 5)",
    "training_gradients": "a training step's gradients",
    "first_call": "the first decoding call (the prefix and two tokens) with a KV cache",
    "cached_two": "a cached decoding step of two tokens at once",
    "cached_one": "a cached decoding step of one token",
    "self_attention": "the self-attention weights the attention pictures draw",
    "cross_attention": "the cross-attention weights the attention pictures draw",
    "greedy": "greedy decoding's captions",
    "beam": "beam search's captions (3 beams)",
    "sampled": "sampled captions (temperature 1, top-k 6, top-p 0.9)",
}


class PathFailed(RuntimeError):
    """The student's code raised an error on one of the captioner's paths (named in the message)."""


class CachedStepFailed(PathFailed):
    """... on a cached decoding step, after a first call that ran."""


def failed_on(path, error):
    """The error the student's code raised on `path`, said again with the path's name."""
    kind = CachedStepFailed if path.startswith("cached") else PathFailed
    return kind(f"on {PATHS[path]}: {type(error).__name__}: {error}")


def paths_that_differ(got, expected):
    from exercises.checker import difference

    if not isinstance(got, tuple) or len(got) != len(expected):
        return None
    return {name for name, g, e in zip(PATHS, got, expected) if difference(g, e) is not None}


@part
def only(*names):
    """A test of what came back: exactly these paths differ (and something does)."""
    return lambda args, got, expected, student: (paths_that_differ(got, expected) or {"-"}) <= set(names)
