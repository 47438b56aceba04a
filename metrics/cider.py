"""CIDEr-D exactly as the COCO caption evaluation computes it (pycocoevalcap's CiderScorer)."""

import math
from collections import Counter, defaultdict

import numpy as np


def ngram_counts(sentence, n=4):
    words = sentence.split()
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def tfidf(counts, document_frequency, log_images, n=4):
    """TF-IDF vectors per n-gram order, their norms, and the length pycocoevalcap uses (the bigram count)."""
    vec = [defaultdict(float) for _ in range(n)]
    norm = [0.0] * n
    length = 0
    for gram, tf in counts.items():
        k = len(gram) - 1
        vec[k][gram] = tf * (log_images - math.log(max(1.0, document_frequency[gram])))
        norm[k] += vec[k][gram] ** 2
        if k == 1:  # as in pycocoevalcap: the "length" counted is that of the bigrams
            length += tf
    return vec, [math.sqrt(x) for x in norm], length


def similarity(hyp, ref, n=4, sigma=6.0):
    (vec_h, norm_h, len_h), (vec_r, norm_r, len_r) = hyp, ref
    delta = float(len_h - len_r)
    val = np.zeros(n)
    for k in range(n):
        for gram in vec_h[k]:
            val[k] += min(vec_h[k][gram], vec_r[k][gram]) * vec_r[k][gram]  # clipped: the "D" in CIDEr-D
        if norm_h[k] != 0 and norm_r[k] != 0:
            val[k] /= norm_h[k] * norm_r[k]
        val[k] *= math.e ** (-(delta**2) / (2 * sigma**2))  # length penalty, sigma 6
    return val


def cider_d(candidates, references, n=4, sigma=6.0):
    """CIDEr-D of tokenized captions: (corpus score, per-image scores). Document frequencies come from the
    references of the evaluated set; each image's score is the mean over n-gram orders and references, x 10."""
    ref_counts = [[ngram_counts(r, n) for r in refs] for refs in references]
    document_frequency = Counter()
    for counts in ref_counts:
        for gram in set(g for c in counts for g in c):
            document_frequency[gram] += 1
    log_images = math.log(float(len(references)))
    scores = []
    for candidate, counts in zip(candidates, ref_counts):
        hyp = tfidf(ngram_counts(candidate, n), document_frequency, log_images, n)
        total = np.zeros(n)
        for c in counts:
            total += similarity(hyp, tfidf(c, document_frequency, log_images, n), n, sigma)
        scores.append(float(np.mean(total)) / len(counts) * 10.0)
    return float(np.mean(scores)), scores
