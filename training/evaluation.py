"""Scoring a run: captions through the same Captioner that generate.py and the Python API use, the COCO
metrics, the best-model rule, and the final report on the test split."""

import time

import numpy as np

from data.sources import batches_by_length
from metrics import ptb_tokenize, score_captions
from training.run_files import append_record, write_loss_curve, write_metric_curves
from training.step import evaluate_loss


def caption_scores(captions, references):
    """Exact-match rate (the caption equals a reference, ignoring case and punctuation) and the COCO
    caption metrics (BLEU-1..4, CIDEr-D, ROUGE-L) with sacreBLEU, as evaluate.py reports them."""
    exact = np.mean([ptb_tokenize(c) in {ptb_tokenize(r) for r in refs} for c, refs in zip(captions, references)])
    return float(exact), score_captions(captions, references)


BEST_METRICS = {"CIDEr-D": "val_CIDEr-D", "BLEU-4": "val_BLEU-4", "exact": "val_exact", "loss": "val_loss"}


def is_better(metric, score, best):
    """Whether a validation score beats the best so far (None: there is none yet); lower is better for loss."""
    return best is None or (score < best if metric == "loss" else score > best)


def validate(captioner, source, val, val_pairs, config, device):
    """The epoch-end record: teacher-forced loss and accuracy, then greedy captions scored."""
    pad = captioner.tokenizer.pad_id
    val_loss, token_acc = evaluate_loss(captioner.model, batches_by_length(val_pairs, source, pad, device,
                                                                           config.batch_size))
    captions = captioner.caption_source(source, val.rows[: config.val_images])
    exact, scores = caption_scores(captions, val.references[: config.val_images])
    record = dict(val_loss=round(val_loss, 5), val_token_accuracy=round(token_acc, 5), val_exact=round(exact, 5),
                  **{f"val_{k}": round(v, 5) for k, v in scores.items()})
    summary = (f"val loss {val_loss:.4f}, token accuracy {token_acc:.3f}, BLEU-4 {scores['BLEU-4']:.3f}, "
               f"CIDEr-D {scores['CIDEr-D']:.3f}, exact captions {exact:.1%}")
    return record, summary


def final_report(run):
    """Write the model folder (first: nothing after it can lose it), the loss curve, and the test split's scores."""
    run.captioner.save_pretrained(run.out / "model")
    try:
        write_loss_curve(run.log_path, run.out / "loss_curve.png")
        write_metric_curves(run.log_path, run.out / "metric_curves.png")
    except (OSError, ValueError) as e:  # a picture, not worth the run
        print(f"warning: no loss or metric curves ({e})")
    test = run.splits["test"] if len(run.splits["test"].rows) else run.splits["val"]
    name = "test" if test is run.splits["test"] else "val"
    captions = run.captioner.caption_source(run.source, test.rows)
    exact, scores = caption_scores(captions, test.references)
    print(f"\n{name} split, {len(captions)} images: exact captions {exact:.1%}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    for caption, refs in list(zip(captions, test.references))[:5]:
        print(f"  {caption!r:60}  reference: {refs[0]!r}")
    summary = {"step": run.step, f"{name}_exact": exact, **{f"{name}_{k}": v for k, v in scores.items()},
               "seconds": round(time.time() - run.started, 1)}
    append_record(run.log_path, summary)
    print(f"model: {run.out / 'model'}  checkpoint: {run.checkpoint_path}  metrics: {run.log_path}  "
          f"loss curve: {run.out / 'loss_curve.png'}  ({time.time() - run.started:.0f}s)")
