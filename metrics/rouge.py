"""ROUGE-L as the COCO caption evaluation computes it (pycocoevalcap's Rouge, beta 1.2)."""


def lcs(a, b):
    """Length of the longest common subsequence of two token lists."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(candidates, references, beta=1.2):
    """(mean score, per-image scores): F-measure of the best LCS precision and recall over the references."""
    scores = []
    for candidate, refs in zip(candidates, references):
        c = candidate.split(" ")
        common = [lcs(r.split(" "), c) for r in refs]
        precision = max(m / len(c) for m in common)
        recall = max(m / len(r.split(" ")) for m, r in zip(common, refs))
        if precision and recall:
            scores.append((1 + beta**2) * precision * recall / (recall + beta**2 * precision))
        else:
            scores.append(0.0)
    return sum(scores) / len(scores), scores
