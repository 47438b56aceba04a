"""Caption metrics as the COCO caption evaluation computes them, in pure Python (no Java)."""

import sacrebleu

from metrics.bleu import bleu
from metrics.cider import cider_d
from metrics.ptb import ptb_tokenize
from metrics.rouge import rouge_l

__all__ = ["ptb_tokenize", "bleu", "cider_d", "rouge_l", "score_captions"]


def score_captions(candidates, references):
    """candidates: one caption per image; references: a list of captions per image.

    Returns BLEU-1..4, CIDEr-D and ROUGE-L on PTB-tokenized text, as the COCO evaluation reports them,
    and sacreBLEU's BLEU on the raw text (its own tokenizer, 0-100 scale).
    """
    cands = [ptb_tokenize(c) for c in candidates]
    refs = [[ptb_tokenize(r) for r in rs] for rs in references]
    b = bleu(cands, refs)
    most = max(len(rs) for rs in references)
    streams = [[rs[k] if k < len(rs) else None for rs in references] for k in range(most)]
    return {
        "BLEU-1": b[0], "BLEU-2": b[1], "BLEU-3": b[2], "BLEU-4": b[3],
        "CIDEr-D": cider_d(cands, refs)[0],
        "ROUGE-L": rouge_l(cands, refs)[0],
        "sacreBLEU": sacrebleu.corpus_bleu(list(candidates), streams).score,
    }
