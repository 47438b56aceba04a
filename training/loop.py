"""The training loop: steps with a warm-up then cosine learning rate, validation and the best model at each
epoch's end, metrics.jsonl and the checkpoint as it goes."""

import math
import time

import torch
from tqdm import tqdm

from captioner.api import evaluating
from captioner.pictures import attention_figure
from data.batches import epoch_batches
from data.sources import get_batch
from model.checkpoint import save_checkpoint
from training.evaluation import BEST_METRICS, is_better, validate
from training.run_files import append_record, checkpoint_state
from training.step import train_step


def training_loop(run):
    """Step until the last epoch ends (True), or until --stop-after or patience stops the run (False)."""
    config = run.config
    run.model.train()
    order = None  # this epoch's batches, made when an epoch starts (or a resumed run starts inside one)
    with tqdm(total=run.total_steps, initial=run.step, desc="train", unit="step", disable=not run.lead,
              mininterval=config.progress_every) as bar:  # closed however the loop ends (Ctrl-C too)
        while run.step < run.total_steps:
            epoch, offset = divmod(run.step, run.steps_per_epoch)
            if offset == 0 or order is None:
                order = epoch_batches(run.train_pairs, config.batch_size, config.seed, epoch, config.group_by_length)
            loss = training_step(run, order[offset].tolist())
            run.step += 1
            bar.set_postfix(loss=f"{loss:.3f}", epoch=epoch + 1, refresh=False)  # drawn by update()
            bar.update(1)
            record = {"step": run.step, "epoch": epoch + 1, "train_loss": round(loss, 5),
                      "lr": run.optimizer.param_groups[0]["lr"]}
            epoch_end = run.step % run.steps_per_epoch == 0
            patience_ran_out = epoch_end and run.lead and end_of_epoch(run, record, epoch)
            stopping = config.stop_after and run.step >= config.stop_after
            if run.lead:
                log_and_checkpoint(run, record, epoch_end or stopping)
            if stopping:
                bar.close()  # before the line below
                if run.lead:
                    print(f"stopped after step {run.step}; continue with --resume")
                return False
            if epoch_end and everyone_stops(patience_ran_out, run.world):
                if run.lead:
                    tqdm.write(f"no better {config.best_metric} in {config.patience} validations: stopping early "
                               f"(the best model is in {run.out / 'best'})")
                break
    return True


def training_step(run, rows):
    """One optimisation step on the global batch `rows` (this process takes its share): the batch's loss."""
    mine = rows[run.rank * len(rows) // run.world : (run.rank + 1) * len(rows) // run.world]  # this process's share
    batch = get_batch([run.train_pairs[i] for i in mine], run.source, run.captioner.tokenizer.pad_id, run.device)
    batch_tokens = sum(len(run.train_pairs[i][1]) - 1 for i in rows)  # predicted tokens in the global batch
    c = run.config
    loss = train_step(run.trained, run.optimizer, run.params, batch, lr_at(run.step, c, run.total_steps), c.grad_clip,
                      c.label_smoothing, run.autocast, c.grad_accum, batch_tokens, run.world, run.scaler)
    if run.world > 1:
        torch.distributed.all_reduce(loss)  # the shares' losses add up to the global batch's mean
    return loss.item()


def lr_at(step, config, total_steps):
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def everyone_stops(stop, world):
    """Whether process 0 decided to stop early, told to every process."""
    if world == 1:
        return stop
    import torch.distributed as dist

    flag = torch.tensor([int(bool(stop))])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def end_of_epoch(run, record, epoch):
    """Validate (process 0), add the scores to `record`, keep the best model; whether patience ran out."""
    config = run.config
    scores, summary = validate(run.captioner, run.source, run.splits["val"], run.val_pairs, config, run.device)
    record.update(scores)
    score = scores[BEST_METRICS[config.best_metric]]
    patience_ran_out = False
    if is_better(config.best_metric, score, run.best["score"]):
        run.best = {"score": score, "stale": 0}
        run.captioner.save_pretrained(run.out / "best")  # the best model so far, kept beside the last one
        record["best"] = True
        summary += f"; best {config.best_metric} so far, kept in {run.out / 'best'}"
    else:
        run.best["stale"] += 1
        patience_ran_out = bool(config.patience and run.best["stale"] >= config.patience)
    tqdm.write(f"epoch {epoch + 1}: {summary}  ({time.time() - run.started:.0f}s)")
    if run.board is not None:
        show_samples(run)
    return patience_ran_out


@torch.no_grad()
def show_samples(run, count=4):
    """TensorBoard: a few validation captions beside a reference each, and where the model looked while
    writing the first (when it reads images as pixels, not cached features)."""
    val = run.splits["val"]
    rows = val.rows[:count]
    captions = run.captioner.caption_source(run.source, rows)
    lines = [f"**{c}** (a reference: {refs[0]})" for c, refs in zip(captions, val.references[:count])]
    run.board.add_text("validation/captions", "\n\n".join(lines), run.step)
    images = run.source.get(rows[:1], run.device).get("images")
    if images is None or run.model.encoder is None:
        return
    tokenizer = run.captioner.tokenizer
    with evaluating(run.model):
        ids = run.model.generate(tokenizer.bos_id, tokenizer.eos_id, images=images)[0][0]
        caption = run.captioner.details(images[0], ids, captions[:1], None, None, 0)
    run.board.add_figure("validation/attention", attention_figure(caption), run.step)


def log_and_checkpoint(run, record, due):
    """Append the step's record to metrics.jsonl; write the checkpoint when `due`, every --checkpoint-every
    steps and at the last step."""
    append_record(run.log_path, record)
    if run.board is not None:
        for name, value in record.items():
            if name not in ("step", "epoch", "best") and isinstance(value, (int, float)):
                run.board.add_scalar(name.replace("val_", "validation/").replace("train_", "train/"), value, run.step)
    if due or run.step % run.config.checkpoint_every == 0 or run.step == run.total_steps:
        state = checkpoint_state(run.model, run.optimizer, run.scaler, run.config, run.captioner.tokenizer, run.step,
                                 run.captioner.preprocess, run.best)
        save_checkpoint(run.checkpoint_path, state)
