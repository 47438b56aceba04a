"""Our BLEU, CIDEr-D and ROUGE-L equal pycocoevalcap's scorers; our PTB tokenizer equals Stanford's."""

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import shared_file
from metrics import bleu, cider_d, ptb_tokenize, rouge_l, score_captions

coco_bleu = pytest.importorskip("pycocoevalcap.bleu.bleu")
coco_cider = pytest.importorskip("pycocoevalcap.cider.cider")
coco_rouge = pytest.importorskip("pycocoevalcap.rouge.rouge")

WORDS = "a the man woman dog two in on with red blue shirt running park street black is are near of and".split()


def synthetic_corpus(images=150, seed=0):
    """Tokenized captions with shared and unshared n-grams, varied lengths and reference counts."""
    rng = random.Random(seed)
    refs, cands = [], []
    for _ in range(images):
        base = [rng.choice(WORDS) for _ in range(rng.randint(3, 12))]
        image_refs = []
        for _ in range(rng.randint(1, 5)):
            r = [w if rng.random() > 0.3 else rng.choice(WORDS) for w in base]
            image_refs.append(" ".join(r[: rng.randint(2, len(r))]))
        refs.append(image_refs)
        cand = [w if rng.random() > 0.4 else rng.choice(WORDS) for w in base]
        cands.append(" ".join(cand[: rng.randint(1, len(cand))] * rng.choice([1, 1, 2])))
    return cands, refs


def coco_scores(cands, refs):
    gts = {i: r for i, r in enumerate(refs)}
    res = {i: [c] for i, c in enumerate(cands)}
    b, _ = coco_bleu.Bleu(4).compute_score(gts, res, verbose=0)
    c, c_each = coco_cider.Cider().compute_score(gts, res)
    r, r_each = coco_rouge.Rouge().compute_score(gts, res)
    return b, (c, c_each), (r, r_each)


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_pycocoevalcap(seed):
    cands, refs = synthetic_corpus(seed=seed)
    b, (c, c_each), (r, r_each) = coco_scores(cands, refs)
    assert bleu(cands, refs) == pytest.approx(b, abs=1e-6)
    ours_c, ours_each = cider_d(cands, refs)
    assert ours_c == pytest.approx(c, abs=1e-6) and ours_each == pytest.approx(list(c_each), abs=1e-6)
    ours_r, ours_r_each = rouge_l(cands, refs)
    assert ours_r == pytest.approx(r, abs=1e-6) and ours_r_each == pytest.approx(list(r_each), abs=1e-6)
    assert 0.05 < b[3] < 0.9 and c > 0.1  # a corpus where the scores are neither 0 nor perfect


def test_metrics_equal_pycocoevalcap_on_real_flickr_captions():
    images = json.load(open(shared_file("flickr30k-mini", "dataset_flickr30k.json")))["images"][:300]
    cands = [ptb_tokenize(im["sentences"][0]["raw"]) for im in images]  # one human caption against the rest
    refs = [[ptb_tokenize(s["raw"]) for s in im["sentences"][1:]] for im in images]
    b, (c, _), (r, _) = coco_scores(cands, refs)
    assert bleu(cands, refs) == pytest.approx(b, abs=1e-6)
    assert cider_d(cands, refs)[0] == pytest.approx(c, abs=1e-6)
    assert rouge_l(cands, refs)[0] == pytest.approx(r, abs=1e-6)


def test_perfect_and_hopeless_captions():
    refs = [["a dog runs on the grass", "a brown dog running"], ["two men talk", "two people are talking"]]
    perfect = score_captions(["A dog runs on the grass.", "Two men talk."], refs)
    assert perfect["BLEU-1"] == pytest.approx(1.0) and perfect["ROUGE-L"] == pytest.approx(1.0)
    hopeless = score_captions(["zebra", "zebra"], refs)
    assert hopeless["BLEU-4"] < 1e-6 and hopeless["CIDEr-D"] == 0 and hopeless["ROUGE-L"] == 0


TRICKY = {
    "A man's dog doesn't run (fast) in the park.": "a man 's dog does n't run -lrb- fast -rrb- in the park",
    'Two "young" kids; near a T-shirt stand...': "two young kids near a t-shirt stand",
    "They're here, we've gone & it's 3:30 p.m. at St. Mary's!": "they 're here we 've gone & it 's 3:30 p.m. at st. mary 's",
    "A man wearing a U.S. flag, 1,000 times -- today.": "a man wearing a u.s. flag 1,000 times today",
    "Don't! CAN'T won't cannot I'm you'll": "do n't ca n't wo n't can not i 'm you 'll",
    "Red &amp; white shirt, $5.00 and 50% off, #15.": "red & white shirt $ 5.00 and 50 % off # 15",
}


def test_ptb_tokenizer_on_the_cases_that_matter():
    for caption, expected in TRICKY.items():
        assert ptb_tokenize(caption) == expected, caption


def java_ptb(captions):
    """pycocoevalcap's own tokenizer (Stanford PTBTokenizer in Java), with its punctuation filter."""
    if shutil.which("java") is None:
        pytest.skip("java is not installed")
    import pycocoevalcap.tokenizer.ptbtokenizer as ptb

    jar_dir = Path(ptb.__file__).parent
    out = subprocess.run(["java", "-cp", ptb.STANFORD_CORENLP_3_4_1_JAR, "edu.stanford.nlp.process.PTBTokenizer",
                          "-preserveLines", "-lowerCase"], input="\n".join(captions), cwd=jar_dir,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    return [" ".join(w for w in line.rstrip().split(" ") if w not in ptb.PUNCTUATIONS) for line in out]


def test_ptb_tokenizer_equals_stanford_on_tricky_captions():
    assert [ptb_tokenize(c) for c in TRICKY] == java_ptb(list(TRICKY))


ENTITIES = ["it&apos;s", "a&nbsp;b", "caf&eacute; sign", "Q&amp;A time", "AT&T store", "AT&amp;Tx", "ATT&amp;t",
            "A&amp;w", "b&amp;W", "B&amp;W photo", "US&amp;A", "a &#39;quote&#39; here", "AT &amp; T", "3&amp;4",
            "I&amp;II", "a&amp;m logo", "I&lt;3NY shirt", "fish &lt; chips &gt;", "&quot;hi&quot; he said",
            "Texas A&amp;M's team", "The biker sponsored by H&amp;R Block."]


def test_ptb_tokenizer_equals_stanford_on_html_entities_and_ampersands():
    """Stanford reads six entities as their characters and keeps other ones; capitals joined by & stay one
    token (at&t, a&m), lower case ones split (a & m)."""
    assert [ptb_tokenize(c) for c in ENTITIES] == java_ptb(ENTITIES)


def test_ptb_tokenizer_equals_stanford_on_real_flickr_captions():
    images = json.load(open(shared_file("flickr30k-captions.json")))["images"]
    captions = [s["raw"].replace("\n", " ") for im in images[:1000] for s in im["sentences"]]
    assert [ptb_tokenize(c) for c in captions] == java_ptb(captions)  # the first 5,000: every one equal
    captions = [s["raw"].replace("\n", " ") for im in images[:6000] for s in im["sentences"]]
    same = sum(ptb_tokenize(c) == j for c, j in zip(captions, java_ptb(captions)))
    assert same / len(captions) > 0.999  # on all 155,070: 28 differ ('n', Dunkin', a lone "p." after a stop)


@pytest.mark.skipif(shutil.which("java") is None, reason="METEOR runs in Java, and java is not installed")
def test_meteor_equals_the_coco_evaluation_pipeline():
    """evaluate.py's METEOR (our PTB tokenizer, then pycocoevalcap's METEOR jar) equals the COCO evaluation's
    own pipeline (Stanford's Java PTB tokenizer, then the same jar), HTML entities and punctuation included."""
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    from metrics.java import java_scores

    references = [["A dog runs on the grass.", "a brown dog, running"], ["A man rides a red bike!", "a&amp;m cyclist"],
                  ["Two kids play in the snow.", "children playing outside in winter"]]
    candidates = ["a dog running on grass", "A man on a bike.", "kids play in snow"]
    tokenized = PTBTokenizer().tokenize({i: [{"caption": c} for c in refs] for i, refs in enumerate(references)})
    mine = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(candidates)})
    expected = Meteor().compute_score(tokenized, mine)[0]
    scores, skipped = java_scores(candidates, references, metrics=("METEOR",))
    assert not skipped and abs(scores["METEOR"] - expected) < 1e-9, (scores, expected)
    assert 0.1 < expected < 0.9


def test_a_java_metric_that_cannot_run_is_skipped_with_one_line(monkeypatch):
    from metrics import java

    monkeypatch.setattr(java.shutil, "which", lambda name: None)
    scores, skipped = java.java_scores(["a dog"], [["a dog"]])
    assert scores == {} and len(skipped) == 2 and all("\n" not in s and "java is not installed" in s for s in skipped)


def reference_clipscore(image_feats, candidate_feats, reference_feats, w=2.5):
    """The authors' clipscore.py (github.com/jmhessel/clipscore: get_clip_score, get_refonlyclipscore and the
    F-score in main), in numpy, on features it would have extracted: per-image scores and their means."""
    import numpy as np

    images = image_feats / np.sqrt(np.sum(image_feats**2, axis=1, keepdims=True))
    candidates = candidate_feats / np.sqrt(np.sum(candidate_feats**2, axis=1, keepdims=True))
    per = w * np.clip(np.sum(images * candidates, axis=1), 0, None)
    text = []
    for c, refs in zip(candidates, reference_feats):
        refs = refs / np.sqrt(np.sum(refs**2, axis=1, keepdims=True))
        text.append(np.max(c.dot(refs.T)))
    text = np.array(text)
    return np.mean(per), np.mean(2 * per * text / (per + text))


def test_clipscore_equals_the_authors_computation():
    """Our CLIPScore and RefCLIPScore (metrics/clipscore.py) equal the authors' steps on the same OpenCLIP model
    (random ViT-S-32 weights: nothing is downloaded), texts prefixed "A photo depicts " as theirs are."""
    open_clip = pytest.importorskip("open_clip")
    import numpy as np
    import torch
    from PIL import Image

    from metrics.clipscore import clip_scores

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)) for _ in range(3)]
    candidates = ["a dog on grass", "a red bike", "two kids in snow"]
    references = [["a dog runs", "a brown dog"], ["a man rides a bike"], ["children play", "kids", "snow day"]]
    torch.manual_seed(0)
    ours = clip_scores(images, candidates, references, "ViT-S-32", None)
    torch.manual_seed(0)  # the same random model, built the same way
    model, _, preprocess = open_clip.create_model_and_transforms("ViT-S-32", pretrained=None)
    tokenizer = open_clip.get_tokenizer("ViT-S-32")
    with torch.no_grad():
        image_feats = model.eval().encode_image(torch.stack([preprocess(i) for i in images])).numpy()
        def text(strings):
            return model.encode_text(tokenizer(["A photo depicts " + s for s in strings])).numpy()

        clip_s, ref_clip_s = reference_clipscore(image_feats, text(candidates), [text(r) for r in references])
    assert ours["CLIPScore"] == pytest.approx(clip_s, rel=1e-4) and ours["RefCLIPScore"] == pytest.approx(ref_clip_s, rel=1e-4)
    assert clip_s > 0 and ref_clip_s > clip_s  # not the degenerate all-zero case
