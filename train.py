"""Train a captioner.

    python train.py                          # built-in shapes, ViT trained from scratch, a few minutes on CPU
    python train.py --preset flickr30k --data dataset_flickr30k.json --images flickr30k-images/
    python train.py --preset flickr30k-gpt2 --gpt2 distilgpt2/ --data dataset_flickr30k.json --images flickr30k-images/
    python train.py --out runs/shapes --resume   # continue exactly where a run stopped

Writes OUT/checkpoint.pt (for --resume), OUT/model/ (config.json + model.safetensors: the model to
share, caption with and serve), OUT/best/ (the same, for the epoch with the best validation score),
train_config.json (the run's settings: --config FILE starts another run from them), metrics.jsonl,
loss_curve.png and metric_curves.png; with --tensorboard, OUT/tensorboard/ for a live view.

Several processes: `torchrun --nproc_per_node N train.py ...` (DistributedDataParallel; each process
takes its share of every batch, process 0 alone validates, logs and writes files).

Reads top to bottom: configuration, data, model, evaluation, then the run: set up (start_run),
the loop (training_loop), the final report (final_report). What a run writes besides its model folder
(checkpoint state, metrics.jsonl, curves, TensorBoard) is in captioner/run_files.py.
"""

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from captioner.api import Captioner, evaluating, hub_download
from captioner.cli import pick_device
from captioner.flags import add_dataclass_flags, shown
from captioner.pictures import attention_figure
from captioner.run_files import (
    checkpoint_state,
    tensorboard_writer,
    write_loss_curve,
    write_metric_curves,
)
from captioner.train_config import DERIVED, PRESETS, TrainConfig, config_with
from data.batches import epoch_batches, make_pairs
from data.captions import check_images, read_captions
from data.gpt2_bpe import GPT2Tokenizer
from data.images import CLIP_MEAN, CLIP_STD
from data.sources import (
    CachedFeatureSource,
    batches_by_length,
    caption_splits,
    get_batch,
    load_image_rows,
    load_shapes,
)
from data.tokenizer import build_tokenizer, tokenizer_from_dict
from metrics import ptb_tokenize, score_captions
from model.caption_model import build_caption_model
from model.checkpoint import (
    CheckpointError,
    check_fits,
    load_checkpoint,
    model_config,
    read_json,
    replace_atomically,
    save_checkpoint,
)
from model.config import to_dict
from model.decoder import DecoderConfig
from model.errors import CaptionerError
from model.hugging_face import gpt2_captioning_decoder, load_gpt2_weights
from model.training import autocast_dtype, evaluate_loss, train_step
from model.vit import ViTConfig

# ----------------------------------------------------------------------------------------------
# Configuration: TrainConfig (captioner/train_config.py) and its presets; one flag per field.


FLAG_GROUPS = [("training", "run", TrainConfig), ("the scratch ViT (--encoder scratch)", "vit", ViTConfig),
               ("the decoder", "decoder", DecoderConfig)]  # (title, part of TrainConfig, its class)


def preset_values(preset, part):
    """A preset's values for one part of TrainConfig: "vit", "decoder", or "run" for its own fields."""
    values = PRESETS[preset]
    return values.get(part, {}) if part != "run" else {k: v for k, v in values.items() if k not in DERIVED["run"]}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny",
                        help="starting values, which any other flag changes (default: tiny)")
    parser.add_argument("--config", metavar="FILE", help="start from a run's settings instead of a preset: the "
                        "train_config.json every run writes in its --out folder; other flags change them")
    fields = {}  # argparse dest -> (part, field name)
    for title, part, cls in FLAG_GROUPS:
        others = [p for p in PRESETS if p != "tiny"]
        notes = {}
        for p in others:
            for name, value in preset_values(p, part).items():
                notes[name] = notes.get(name, "") + f"; {p}: {shown(value)}"
        prefix = "" if part == "run" else part + "-"  # --lr, --vit-width, --decoder-layers
        added = add_dataclass_flags(parser, cls, prefix, DERIVED.get(part, ()), preset_values("tiny", part), notes, title)
        fields.update({dest: (part, name) for dest, name in added.items()})
    args = parser.parse_args(argv)
    given = {"vit": {}, "decoder": {}}
    for dest, (part, name) in fields.items():
        if getattr(args, dest) is not None:
            (given if part == "run" else given[part])[name] = getattr(args, dest)
    if Path(given.get("data", "")).stem == "metadata" and not given.get("images"):  # imagefolder: beside the images
        given["images"] = str(Path(given["data"]).parent)
    try:
        start = read_json(args.config, ValueError) if args.config else None
        config = config_with(args.config or args.preset, start, **given) if start else config_with(args.preset, **given)
    except ValueError as e:  # not JSON, or a field unknown or out of range: one line naming the file
        parser.error(str(e))
    if config.data != "shapes" and not (config.data and config.images):
        parser.error("a caption file needs --data CAPTIONS and --images FOLDER")
    if config.best_metric not in BEST_METRICS:
        parser.error(f"--best-metric must be one of {', '.join(BEST_METRICS)}, not {config.best_metric!r}")
    if config.grad_accum < 1 or config.grad_accum > config.batch_size:
        parser.error(f"--grad-accum must be between 1 and the batch size ({config.batch_size}), not {config.grad_accum}")
    if config.gpt2 and not Path(config.gpt2).is_dir() and not config.download:
        parser.error(f"--gpt2 {config.gpt2}: no such folder; add --download to fetch it from the Hugging Face hub")
    if args.preset == "flickr30k-gpt2" and not config.gpt2:
        parser.error("the flickr30k-gpt2 preset needs --gpt2 FOLDER: a GPT-2 or DistilGPT2 model folder "
                     "(config.json, model.safetensors, vocab.json, merges.txt)")
    if config.encoder == "clip" and config.data == "shapes":
        parser.error("--encoder clip reads an images folder; use it with --data CAPTIONS --images FOLDER")
    return config


# ----------------------------------------------------------------------------------------------
# Data: each split is a list of images (a row in the image source) with their reference captions.


def load_data(config, device, rank=0, world=1, encoder=None):
    """(splits, source, frozen_vit): the built-in shapes or a caption file; frozen_vit is the CLIP encoder
    the cached features came from (kept in the checkpoint), or None for a scratch ViT. rank of world
    processes: the feature extraction is split between them. encoder: a resumed run's CLIP weights (its
    checkpoint's), used instead of loading them, so --resume never downloads."""
    if config.data == "shapes":
        counts = {"train": config.shapes_train, "val": config.shapes_val, "test": config.shapes_test}
        for split, name in (("train", "training"), ("val", "validation")):
            if counts[split] < 1:
                raise SystemExit(f"error: --shapes-{split} {counts[split]}: the {name} split is empty; it needs "
                                 "at least one scene")
        splits, source = load_shapes(counts, config.vit.image_size, config.seed, config.train_on_all_references)
        return splits, source, None
    captions = read_captions(config.data, seed=config.seed)
    dropped = check_images(captions, config.images, config.skip_missing)
    if dropped:
        print(f"skipping {dropped} captioned images missing from {config.images}")
    names = sorted(captions.captions)
    frozen_vit = None
    if config.encoder == "clip":
        from data.features import extract_features
        from model.clip import load_clip_vit

        pretrained = None if config.clip_pretrained == "none" or encoder else config.clip_pretrained
        frozen_vit, preprocess = load_clip_vit(config.clip_model, pretrained)
        if encoder:
            frozen_vit.load_state_dict(encoder)
        # On a CPU the encoder's threads already use every core: loader workers only compete with them
        # (bench/feature_extraction.py: 2 workers ran at 0.88x of none on 2 cores). On a GPU they feed it.
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
        cache = extract_features(frozen_vit.to(device), preprocess, config.clip_model, config.images, names,
                                 config.feature_cache, num_workers=workers, device=device, share=(rank, world),
                                 wait_for_all=torch.distributed.barrier if world > 1 else lambda: None)
        frozen_vit.cpu()
        source, row_of = CachedFeatureSource(cache), {n: cache.index[n] for n in cache.usable()}
    else:
        source, row_of = load_image_rows(config.images, names, config.vit.image_size)
    splits = caption_splits(captions, row_of)
    if not len(splits["train"].rows):
        raise SystemExit(f"{config.data}: no training images left")
    return splits, source, frozen_vit


# ----------------------------------------------------------------------------------------------
# Model: a scratch ViT trained with the decoder, or a frozen CLIP ViT whose features are cached.


def describe_fresh(names):
    """The kinds of parameters a pretrained decoder did not have, in a few words."""
    kinds = sorted({n.split(".")[2] if n.startswith("blocks.") else n.split(".")[0] for n in names})
    return ", ".join(kinds) or "nothing"


def trainable_parameters(model, train_only):
    """Freeze all but what `train_only` names; returns the parameters the optimizer updates."""
    def cross_attention(name):  # the cross-attention layers, their norms, and the patch projection feeding them
        in_block = name.startswith("decoder.blocks.") and (".cross_attn." in name or ".ln_2." in name)
        return in_block or name.startswith("decoder.patch_proj.")

    wanted = {"all": lambda n: True, "cross_attention": cross_attention,
              "prefix": lambda n: n.startswith("decoder.prefix.")}[train_only]
    params = []
    frozen = model.config.frozen_encoder
    for name, p in model.named_parameters():
        p.requires_grad_(wanted(name) and not (frozen and name.startswith("encoder.")))
        if p.requires_grad:
            params.append(p)
    return params


def start_processes(config):
    """(rank, world size, device). torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; a plain `python train.py`
    has none of them and runs as it always has: one process, no process group."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = pick_device(config.device)
    if world == 1:
        return 0, 1, device
    if config.batch_size % world:  # every process stops here, before any waits for the others
        raise SystemExit(f"error: --batch-size {config.batch_size} does not split evenly over {world} processes")
    import torch.distributed as dist

    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))  # one GPU per process
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world, device


def everyone_stops(stop, world):
    """Whether process 0 decided to stop early, told to every process."""
    if world == 1:
        return stop
    import torch.distributed as dist

    flag = torch.tensor([int(bool(stop))])
    dist.broadcast(flag, src=0)
    return bool(flag.item())


def lr_at(step, config, total_steps):
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------
# Evaluation: captions through the same Captioner that generate.py and the Python API use.


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


# ----------------------------------------------------------------------------------------------
# The training loop


def main(argv=None):
    config = parse_args(argv)
    try:
        if not config.student_code:
            return train(config)
        from exercises import student_code, use_student_code

        with use_student_code(student_code(config.student_code, config.student_dir)):
            print(f"training with your code from {config.student_dir}/ for: {config.student_code}")
            return train(config)
    except CaptionerError as e:  # bad data, a broken file: one line naming it, no traceback (model/errors.py)
        raise SystemExit(f"error: {e}") from None


@dataclass
class Run:
    """What a training run holds while it trains: made by start_run, advanced by the loop, reported at the end."""

    config: TrainConfig
    out: Path
    rank: int  # this process, of `world`; process 0 (the lead) alone validates, prints, logs and writes files
    world: int
    device: torch.device
    splits: dict  # "train", "val", "test": Splits of the image source
    source: object  # the images (pixels or cached CLIP features) the splits' rows index
    captioner: Captioner  # the model with its tokenizer and preprocessing: what validation captions with
    trained: torch.nn.Module  # what the steps run: the model itself, or DDP or torch.compile around it
    params: list  # the parameters the optimizer updates
    optimizer: torch.optim.Optimizer
    scaler: object  # float16's gradient scaler, or None
    autocast: object  # the mixed-precision dtype, or None
    train_pairs: list  # (image row, caption token ids)
    val_pairs: list
    steps_per_epoch: int
    board: object = None  # a TensorBoard SummaryWriter with --tensorboard, else None
    step: int = 0
    best: dict = field(default_factory=lambda: {"score": None, "stale": 0})  # best validation score, validations since
    started: float = field(default_factory=time.time)

    @property
    def lead(self):
        return self.rank == 0

    @property
    def model(self):
        return self.captioner.model

    @property
    def total_steps(self):
        return self.steps_per_epoch * self.config.epochs

    @property
    def checkpoint_path(self):
        return self.out / "checkpoint.pt"

    @property
    def log_path(self):
        return self.out / "metrics.jsonl"


def train(config):
    """Set up the run (or resume it), train to the end or until stopped, then report on the test split."""
    run = start_run(config)
    if training_loop(run) and run.lead:
        final_report(run)
    if run.board is not None:
        run.board.close()
    return finish(run.model, run.world)


# -- setting up -------------------------------------------------------------------------------


def resume_state(config):
    """(the configuration to run with, the checkpoint to resume from or None). A resumed run takes the
    settings it started with, except how it is shown, and never downloads: all it needs is in the checkpoint."""
    if not config.resume:
        return config, None
    path = Path(config.out) / "checkpoint.pt"
    try:
        resumed = load_checkpoint(path)
        saved = dict(resumed["train_config"], resume=True, stop_after=config.stop_after,
                     progress_every=config.progress_every)  # how to show this run, not what it learns
        saved = TrainConfig.from_dict(saved, f"{path}, train_config")  # the settings it started with
    except (CheckpointError, ValueError, KeyError) as e:
        raise SystemExit(f"error: {e}" if not isinstance(e, KeyError) else
                         f"error: {path}: not a training checkpoint (no {e})") from None
    return dataclasses.replace(saved, download=False), resumed


def build_model(config, splits, frozen_vit, resumed, device, lead):
    """(config, tokenizer, model): the tokenizer and model a new run starts from (scratch, or GPT-2's weights
    with --gpt2), or a resumed run's shape from its checkpoint; config with a downloaded --gpt2's folder."""
    try:
        if resumed is not None:  # the tokenizer and the decoder's shape come from the checkpoint, not --gpt2
            where = Path(config.out) / "checkpoint.pt"
            tokenizer = tokenizer_from_dict(resumed["tokenizer"], f"{where}, tokenizer")
            decoder_config = model_config(resumed["model_config"], f"{where}, model_config").decoder
        else:
            if config.gpt2 and not Path(config.gpt2).is_dir():  # a hub name, and the user asked for it (--download)
                config = dataclasses.replace(config, gpt2=str(hub_download(config.gpt2)))
            train_captions = [c for caps in splits["train"].targets for c in caps]
            tokenizer = (GPT2Tokenizer.from_folder(config.gpt2) if config.gpt2 else
                         build_tokenizer(config.tokenizer, train_captions, config.min_count))
            decoder_config = gpt2_captioning_decoder(config.gpt2, config.decoder) if config.gpt2 else config.decoder
        model = build_caption_model(config.vit, decoder_config, tokenizer.vocab_size, frozen_vit).to(device)
        if resumed is not None:
            check_fits(model.config, {k: v.shape for k, v in resumed["model"].items()}, f"{where}, model_config", where)
        elif config.gpt2:
            fresh = load_gpt2_weights(model.decoder, config.gpt2)
            if lead:
                print(f"decoder from {config.gpt2}; new, trained from scratch: {describe_fresh(fresh)}")
    except ValueError as e:  # a GPT-2 folder or a checkpoint that cannot be used: one line naming the file
        raise SystemExit(f"error: {e}") from None
    return config, tokenizer, model


def start_run(config):
    """Everything the loop needs: processes, data, model, optimizer; a resumed run's state restored."""
    config, resumed = resume_state(config)
    torch.manual_seed(config.seed)
    rank, world, device = start_processes(config)
    Path(config.out).mkdir(parents=True, exist_ok=True)
    if rank == 0:  # the run's settings in a file of their own: read them, or start another run with --config
        replace_atomically(Path(config.out) / "train_config.json",
                           lambda tmp: tmp.write_text(json.dumps(to_dict(config), indent=1) + "\n"))
    encoder = resumed and {k[len("encoder."):]: v for k, v in resumed["model"].items() if k.startswith("encoder.")}
    splits, source, frozen_vit = load_data(config, device, rank, world, encoder)
    if not len(splits["val"].rows):
        raise SystemExit(f"error: {config.data}: the validation split is empty; training validates after every "
                         "epoch (give the file a 'val' split, or enough images that its automatic 5% validation split holds one)")
    config, tokenizer, model = build_model(config, splits, frozen_vit, resumed, device, rank == 0)
    params = trainable_parameters(model, config.train_only)
    autocast = autocast_dtype(device, config.amp)  # bfloat16, float16 (a GPU without bfloat16) or None
    preprocess = ({"kind": "squash", "image_size": config.vit.image_size, "mean": CLIP_MEAN, "std": CLIP_STD}
                  if frozen_vit is None else dict(frozen_vit.preprocess_cfg, kind="openclip"))
    max_len = model.decoder.config.max_caption  # captions are cut to what the positions hold
    train_pairs = make_pairs(splits["train"].rows, splits["train"].targets, tokenizer, max_len)
    run = Run(config, Path(config.out), rank, world, device, splits, source, Captioner(model, tokenizer, preprocess),
              wrapped(model, config, device, world), params,
              torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay),
              torch.amp.GradScaler(device.type) if autocast == torch.float16 else None, autocast, train_pairs,
              make_pairs(splits["val"].rows, splits["val"].targets, tokenizer, max_len),  # what is taught
              len(train_pairs) // config.batch_size)
    if config.tensorboard and run.lead:
        run.board = tensorboard_writer(run.out / "tensorboard")
    if resumed is not None:
        restore(run, resumed)
    elif run.log_path.exists() and run.lead:
        run.log_path.unlink()  # a fresh run starts a fresh log
    if run.lead:
        print(f"{len(train_pairs):,} training captions, {len(splits['val'].rows):,} validation images, "
              f"vocabulary {tokenizer.vocab_size:,}, {sum(p.numel() for p in params) / 1e6:.2f}M trainable "
              f"parameters, {device}" + (f", {world} processes" if world > 1 else ""))
    return run


def wrapped(model, config, device, world):
    """What the optimisation steps run: the model, in DistributedDataParallel on several processes, compiled
    with --compile. Checkpoints always hold the plain model's state_dict()."""
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    return torch.compile(model) if config.compile else model


def restore(run, resumed):
    """A resumed run's weights, optimizer, loss scale, step, best score and random state, as they were saved."""
    run.model.load_state_dict(resumed["model"])
    run.optimizer.load_state_dict(resumed["optimizer"])
    if run.scaler is not None and resumed.get("scaler"):
        run.scaler.load_state_dict(resumed["scaler"])
    run.step, run.best = resumed["step"], resumed.get("best", run.best)  # checkpoints before best models had none
    torch.set_rng_state(resumed["rng"])
    if resumed["cuda_rng"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(resumed["cuda_rng"])
    if run.lead:
        print(f"resumed from {run.checkpoint_path} at step {run.step}")


# -- the loop ---------------------------------------------------------------------------------


def training_loop(run):
    """Step until the last epoch ends (True), or until --stop-after or patience stops the run (False)."""
    config = run.config
    run.model.train()
    order = None  # this epoch's batches, made when an epoch starts (or a resumed run starts inside one)
    bar = tqdm(total=run.total_steps, initial=run.step, desc="train", unit="step", disable=not run.lead,
               mininterval=config.progress_every)
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
            bar.close()
            if run.lead:
                print(f"stopped after step {run.step}; continue with --resume")
            return False
        if epoch_end and everyone_stops(patience_ran_out, run.world):
            if run.lead:
                tqdm.write(f"no better {config.best_metric} in {config.patience} validations: stopping early "
                           f"(the best model is in {run.out / 'best'})")
            break
    bar.close()
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
    with open(run.log_path, "a") as f:
        f.write(json.dumps(record) + "\n")
    if run.board is not None:
        for name, value in record.items():
            if name not in ("step", "epoch", "best") and isinstance(value, (int, float)):
                run.board.add_scalar(name.replace("val_", "validation/").replace("train_", "train/"), value, run.step)
    if due or run.step % run.config.checkpoint_every == 0 or run.step == run.total_steps:
        state = checkpoint_state(run.model, run.optimizer, run.scaler, run.config, run.captioner.tokenizer, run.step,
                                 run.captioner.preprocess, run.best)
        save_checkpoint(run.checkpoint_path, state)


# -- the final report -------------------------------------------------------------------------


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
    with open(run.log_path, "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(f"model: {run.out / 'model'}  checkpoint: {run.checkpoint_path}  metrics: {run.log_path}  "
          f"loss curve: {run.out / 'loss_curve.png'}  ({time.time() - run.started:.0f}s)")


def finish(model, world):
    """Wait for every process (process 0 may still be writing files), then leave the process group."""
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return model


def command(argv=None):
    """What `python train.py` runs. Under torchrun, a process that fails writes its error where torchrun
    reads it, so torchrun's summary names the failing process and its error (the others are stopped)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return main(argv)
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(main)(argv)


if __name__ == "__main__":
    command()
