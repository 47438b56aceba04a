"""BLEU-1..4 exactly as the COCO caption evaluation computes it (pycocoevalcap's BleuScorer, "closest")."""

import math
from collections import Counter


def ngrams(words, n):
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu(candidates, references, n=4):
    """Corpus BLEU-1..n of tokenized captions. candidates: list of str; references: list of lists of str.

    Per candidate: n-gram counts clipped by the most any one reference has; reference length = the
    reference length closest to the candidate's (ties: the shorter). Counts are summed over the corpus,
    BLEU-k is the geometric mean of the 1..k precisions times the brevity penalty.
    Returns [BLEU-1, ..., BLEU-n] in [0, 1].
    """
    tiny, small = 1e-15, 1e-9  # pycocoevalcap's guards: a zero count still gives 0, never a division error
    guess, correct = [0] * n, [0] * n
    test_len = ref_len = 0
    for candidate, refs in zip(candidates, references):
        words = candidate.split()
        ref_words = [r.split() for r in refs]
        max_counts = Counter()
        for r in ref_words:
            for k in range(1, n + 1):
                for gram, count in ngrams(r, k).items():
                    max_counts[gram] = max(max_counts[gram], count)
        test_len += len(words)
        ref_len += min((abs(len(r) - len(words)), len(r)) for r in ref_words)[1]
        for k in range(1, n + 1):
            counts = ngrams(words, k)
            guess[k - 1] += max(len(words) - k + 1, 0)
            correct[k - 1] += sum(min(c, max_counts[g]) for g, c in counts.items())
    scores, product = [], 1.0
    for k in range(n):
        product *= (correct[k] + tiny) / (guess[k] + small)
        scores.append(product ** (1 / (k + 1)))
    ratio = (test_len + tiny) / (ref_len + small)
    if ratio < 1:
        scores = [s * math.exp(1 - 1 / ratio) for s in scores]
    return scores
