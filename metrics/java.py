"""METEOR and SPICE, the two columns of the COCO caption evaluation that exist only in Java: run through
pycocoevalcap's own jars (the reference implementations) when Java and pycocoevalcap are installed, and
skipped with one line saying why otherwise. Nothing is downloaded: SPICE runs only where its Stanford
CoreNLP models are already installed (pycocoevalcap downloads them on first use; here that is the user's
own step: `python -c "from pycocoevalcap.spice.get_stanford_models import get_stanford_models as g; g()"`).

Captions are PTB-tokenized by metrics/ptb.py first, as the COCO evaluation's Java tokenizer does."""

import importlib.util
import shutil
from pathlib import Path

from metrics.ptb import ptb_tokenize

JAVA_METRICS = ("METEOR", "SPICE")


def why_not(metric):
    """None when `metric` can run here; otherwise one line saying what is missing."""
    if shutil.which("java") is None:
        return f"{metric} skipped: it runs in Java, and java is not installed (e.g. apt-get install default-jre)"
    spec = importlib.util.find_spec("pycocoevalcap")
    if spec is None:
        return f"{metric} skipped: it needs pycocoevalcap (pip install pycocoevalcap) and Java"
    if metric == "SPICE":
        lib = Path(list(spec.submodule_search_locations)[0]) / "spice" / "lib"
        if not list(lib.glob("stanford-corenlp-3.6.0*.jar")):
            return ("SPICE skipped: its Stanford CoreNLP models are not installed (pycocoevalcap's "
                    "spice/get_stanford_models.py downloads them, about 1 GB)")
    return None


def java_scores(candidates, references, metrics=JAVA_METRICS):
    """({metric: corpus score} for those that can run here, [one line per metric skipped and why])."""
    gts = {i: [ptb_tokenize(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [ptb_tokenize(c)] for i, c in enumerate(candidates)}
    scores, skipped = {}, []
    for metric in metrics:
        reason = why_not(metric)
        if reason:
            skipped.append(reason)
            continue
        if metric == "METEOR":
            from pycocoevalcap.meteor.meteor import Meteor

            scorer = Meteor()
        else:
            from pycocoevalcap.spice.spice import Spice

            scorer = Spice()
        scores[metric] = float(scorer.compute_score(gts, res)[0])  # Meteor's __del__ ends its Java process
    return scores, skipped
