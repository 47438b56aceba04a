"""Structural findings: what a wrong output has in common with the right one, when no listed mistake
explains it. Each rule compares the student's output with the expected one on the failing case:

    the axes in another order      equal to the expected output with some axes permuted
    a constant factor              equal to c x expected, and which size of the inputs c is (sqrt(D), 1/S, ...)
    rows mixed between items       batch row b holds what row b' should (or every row holds one row's)
    only where the mask hides      the differences lie only where (or in the rows where) a mask is False
    only some batch rows           the other rows are right
    only the last (first) places   along one axis, the differences are a suffix (prefix)
    NaN                            NaN where the expected output has a number
"""

import itertools
import math
from dataclasses import dataclass
from functools import cached_property

import torch


def close(a, b):
    return a.shape == b.shape and bool(torch.isclose(a.double(), b.double(), rtol=1e-4, atol=1e-5, equal_nan=True).all())


def first_difference(got, expected, names):
    """The first (got, expected, name) of a result that differs, descending into tuples."""
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return None
        names = names if isinstance(names, tuple) else tuple(f"{names}[{i}]" for i in range(len(expected)))
        for g, e, n in zip(got, expected, names):
            found = first_difference(g, e, n)
            if found:
                return found
        return None
    if isinstance(got, torch.Tensor) and isinstance(expected, torch.Tensor) and not (
            got.shape == expected.shape and got.dtype == expected.dtype and close(got, expected)):
        return got, expected, names
    return None


def sizes_in(args):
    """Every size that appears in the case's inputs: the integers, and the lengths of the tensors' axes."""
    sizes = set()
    for a in args:
        if isinstance(a, bool):
            continue
        if isinstance(a, int) and a > 1:
            sizes.add(a)
        elif isinstance(a, torch.Tensor):
            sizes.update(n for n in a.shape if n > 1)
    return sorted(sizes)


def factor_name(c, args):
    """Which sizes of the inputs c could be (sqrt(16), 1/4, ...), or None."""
    names = [name for n in sizes_in(args) for value, name in ((math.sqrt(n), f"sqrt({n})"), (1 / math.sqrt(n), f"1/sqrt({n})"),
                                                              (n, f"{n}"), (1 / n, f"1/{n}"))
             if math.isclose(c, value, rel_tol=1e-3)]
    names.sort(key=lambda name: "sqrt" not in name)  # a square root is the likelier story
    return " or ".join(names) or None


def a_mask(args, shape):
    """The first boolean tensor among the inputs that broadcasts to `shape`, broadcast."""
    for a in args:
        if isinstance(a, torch.Tensor) and a.dtype == torch.bool:
            try:
                return a.expand(shape)
            except RuntimeError:
                continue
    return None


def structural(got, expected, args=(), names="result"):
    """A sentence on how `got` relates to `expected`, or None when no rule fits."""
    found = first_difference(got, expected, names)
    if found is None:
        return None
    got, expected, name = found
    if got.shape != expected.shape:
        return shape_finding(got, expected, name)
    if got.is_complex() or got.dtype != expected.dtype and got.dtype == torch.bool:
        return None
    compared = Compared(got, expected, name, args)
    for rule in RULES:  # the first rule that fits, most specific first
        sentence = rule(compared)
        if sentence:
            return sentence
    return None


@dataclass
class Compared:
    """A student's output beside the expected one (same shape), what every rule reads; the derived views are
    computed once, by the first rule that asks."""

    got: torch.Tensor
    expected: torch.Tensor
    name: str
    args: tuple

    @cached_property
    def g(self):
        return self.got.double()

    @cached_property
    def e(self):
        return self.expected.double()

    @cached_property
    def wrong(self):
        """Where got differs from expected (boolean, the shape of got)."""
        return ~torch.isclose(self.g, self.e, rtol=1e-4, atol=1e-5, equal_nan=True)


def shape_finding(got, expected, name):
    if sorted(got.shape) == sorted(expected.shape):
        return (f"{name} has the right sizes in another order, {tuple(got.shape)} instead of "
                f"{tuple(expected.shape)}: a transpose or permute is missing, or in the wrong place.")
    if got.numel() == expected.numel():
        return f"{name} has the right number of values but shape {tuple(got.shape)}: a view or reshape to the wrong shape."
    return None


def nan_finding(c):
    got, expected, name = c.got, c.expected, c.name
    nan = torch.isnan(got) & ~torch.isnan(expected) if got.is_floating_point() else torch.zeros(())
    if nan.any():
        return (f"{name} has NaN in {int(nan.sum())} of {got.numel()} places where a number belongs: a softmax "
                "over a row that is all -inf, 0 / 0, or the square root of a negative number?")


def permuted_finding(c):
    got, name, g, e = c.got, c.name, c.g, c.e
    for order in itertools.permutations(range(got.dim())) if got.dim() > 1 else ():
        if order != tuple(range(got.dim())) and g.permute(order).shape == e.shape and close(g.permute(order), e):
            moved = [i for i, j in enumerate(order) if i != j]
            return (f"{name} is the expected output with axes {', '.join(map(str, moved))} in another order: "
                    "a transpose or permute is missing, extra, or on the wrong axes.")


def factor_finding(c):
    got, name, args, g, e = c.got, c.name, c.args, c.g, c.e
    if got.is_floating_point() and (torch.isfinite(e) & torch.isfinite(g)).all() and (e != 0).any():
        c = float((g * e).sum() / (e * e).sum())
        if not math.isclose(c, 1.0, rel_tol=1e-3) and close(g, c * e):
            which = factor_name(c, args)
            return (f"{name} is the expected output times {c:.4g}" + (f" = {which}, a size of the inputs" if which
                    else "") + ": a scale applied twice, missing or wrong.")


def batch_rows_finding(c):
    got, name, g, e, B = c.got, c.name, c.g, c.e, c.got.size(0)
    if got.dim() > 1 and B > 1:
        match = [next((j for j in range(B) if close(g[b], e[j])), None) for b in range(B)]
        if None not in match and len(set(match)) == 1:
            return (f"{name}: every batch row holds row {match[0]}'s: one row's value (its length, its order) is "
                    "used for all rows.")
        if None not in match and sorted(match) == list(range(B)) and match != list(range(B)):
            pairs = ", ".join(f"row {b} holds row {j}'s" for b, j in enumerate(match) if b != j)
            return (f"{name}: {pairs}: rows are mixed between batch items (an index, a sort or a view that "
                    "crossed the batch axis).")


def masked_finding(c):
    got, name, args, wrong = c.got, c.name, c.args, c.wrong
    mask = a_mask(args, got.shape)
    if mask is not None and not mask.all() and not (wrong & mask).any():
        return f"{name} differs only where the mask hides keys: a masked key must get exactly 0 (fill its score with -inf before the softmax)."
    rows_mask = a_mask(args, got.shape[:-1] + (mask_size(args),)) if mask_size(args) else None
    if rows_mask is not None and not rows_mask.all():
        hidden_rows = ~rows_mask.all(-1)  # query rows whose mask hides some key
        if not (wrong.any(-1) & ~hidden_rows).any():
            return f"{name} differs only in the rows whose mask hides some key: the mask is not applied, or not as True = may attend."


def some_rows_finding(c):
    got, name, B = c.got, c.name, c.got.size(0)
    if got.dim() > 1 and B > 1:
        bad = c.wrong.reshape(B, -1).any(1)
        if not bad.all():
            rows = [i for i in range(B) if bad[i]]
            return (f"{name} differs only in batch rows {rows} of {B}; the others are right: something depends on "
                    "the row (its length, its mask, its own order) and is taken from another row or ignored.")


def positions_finding(c):
    got, name, wrong = c.got, c.name, c.wrong
    for axis in range(1, got.dim()):
        n = got.size(axis)
        bad = wrong.transpose(0, axis).reshape(n, -1).any(1)
        if n > 2 and not bad.all():
            k = int(bad.sum())
            if bad[n - k:].all():
                return (f"{name} differs only in the last {k} of {n} places along axis {axis}; the first {n - k} "
                        "are right (later positions or steps, e.g. those after a cache).")
            if bad[:k].all():
                return f"{name} differs only in the first {k} of {n} places along axis {axis}; the rest are right."


RULES = [nan_finding, permuted_finding, factor_finding, batch_rows_finding, masked_finding, some_rows_finding,
         positions_finding]  # each Compared -> a sentence, or None when it does not fit


def mask_size(args):
    """The key count S of the first boolean mask among the inputs (its last axis), or None."""
    return next((a.size(-1) for a in args if isinstance(a, torch.Tensor) and a.dtype == torch.bool), None)
