"""Structural findings (exercises/findings.py): a wrong answer that no listed mistake explains still gets a
sentence on how it relates to the right one. Each rule is triggered by a wrong implementation written as a
student might, and checked through the same `check` a notebook calls."""

import pytest

from exercises import EXERCISES, check
from tests.test_exercises import solution

WRONG = [  # (exercise, the wrong function, words of the finding)
    ("heads", '''
def split_heads(x, heads):
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads)''', "right sizes in another order, (2, 5, 3, 4) instead of (2, 3, 5, 4)"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(-1)
    return w @ v, w.transpose(-2, -1)''', "weights is the expected output with axes 2, 3 in another order"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    w = scores.softmax(-1)
    return (w @ v) * math.sqrt(q.size(-1)), w''', "out is the expected output times 4 = sqrt(16)"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, -3.0)
    w = scores.softmax(-1)
    return w @ v, w''', "differs only in the rows whose mask hides some key"),
    ("attention", '''
def attention(q, k, v, mask=None):
    scores = torch.log(q @ k.transpose(-2, -1))
    w = scores.softmax(-1)
    return w @ v, w''', "NaN in"),
    ("masks", '''
def padding_mask(lengths, S):
    return (torch.arange(S)[None, :] < lengths.max()).expand(len(lengths), S)[:, None, None, :]''',
     "every batch row holds row 2's"),
    ("masks", '''
def padding_mask(lengths, S):
    return (torch.arange(S)[None, :] < lengths.clamp(min=2)[:, None])[:, None, None, :]''',
     "differs only in batch rows [1] of 3"),
    ("cache", '''
def cached_attention(q, k, v, past=None):
    scale = math.sqrt(q.size(-1)) if past is None else q.size(-1)
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    T, S = q.size(2), k.size(2)
    mask = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
    w = (q @ k.transpose(-2, -1) / scale).masked_fill(~mask, float("-inf")).softmax(-1)
    return w @ v, (k, v)''', "differs only in the last 3 of 7 places along axis 2"),
    ("filters", '''
def top_k_filter(logits, k):
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf")).flip(0)''', "rows are mixed between batch items"),
]


@pytest.mark.parametrize("name, source, finding", WRONG, ids=[w[2][:40] for w in WRONG])
def test_each_structural_rule_names_what_differs(name, source, finding):
    namespace = {}
    exec("import math\nimport torch\n" + source, namespace)  # noqa: S102 - the test's own source
    wrong = {f: namespace[f] for f in EXERCISES[name].functions if f in namespace}
    report = check(name, **(solution(name) | wrong), quiet=True)
    assert "Likely mistake" not in report.message  # no listed mistake explains these: the finding speaks
    assert "What differs: " in report.message and finding in report.message, report.message
