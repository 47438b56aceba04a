"""Train a captioner.

    python train.py                          # built-in shapes, ViT trained from scratch, a few minutes on CPU
    python train.py --preset flickr30k --data dataset_flickr30k.json --images flickr30k-images/
    python train.py --out runs/shapes --resume   # continue exactly where a run stopped

Reads top to bottom: configuration, data, model, evaluation, checkpoints, the training loop.
"""

import argparse
import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from data.batches import make_batch, make_pairs
from data.captions import check_images, read_captions
from data.images import CLIP_MEAN, CLIP_STD, ImageError, load_image_array, normalize
from data.shapes import make_split
from data.tokenizer import BPETokenizer, WordTokenizer, tokenizer_from_dict
from metrics import ptb_tokenize, score_captions
from model.captioner import Captioner, CaptionerConfig
from model.checkpoint import load_checkpoint, pick_device, save_checkpoint
from model.decoder import DecoderConfig
from model.sampling import generate
from model.vit import ViTConfig

# ----------------------------------------------------------------------------------------------
# Configuration: one dataclass, named presets, command-line flags built from the fields.


@dataclass
class TrainConfig:
    # data
    data: str = "shapes"  # "shapes" (built in, generated from the seed) or a caption file
    images: str = ""  # images folder, for a caption file
    skip_missing: bool = False  # drop captioned images the folder lacks, instead of stopping
    shapes_train: int = 20000  # built-in dataset: images per split
    shapes_val: int = 500
    shapes_test: int = 1000
    train_on_all_references: bool = False  # shapes: also train on the second word order (slower to learn)
    # encoder
    encoder: str = "scratch"  # "scratch": our ViT trained with the decoder; "clip": frozen OpenCLIP, cached features
    clip_model: str = "ViT-B-32"  # OpenCLIP architecture, for encoder "clip"
    clip_pretrained: str = "openai"  # OpenCLIP tag, local checkpoint file, or "none" for random weights
    feature_cache: str = "cache"  # folder of cached CLIP features
    image_size: int = 32  # scratch ViT: images are squashed to image_size x image_size
    patch_size: int = 8
    vit_width: int = 128
    vit_layers: int = 3
    vit_heads: int = 4
    # tokenizer
    tokenizer: str = "word"  # "word" (vocabulary of the training captions) or "bpe" (OpenCLIP's, 49,408 ids)
    min_count: int = 1  # word tokenizer: rarer words become <unk>
    # decoder
    width: int = 128
    layers: int = 2
    heads: int = 4
    prefix_len: int = 4
    prefix_mapper: str = "mlp"  # "mlp" or "transformer"
    cross_attention: bool = True  # False: pure ClipCap
    max_len: int = 16  # caption tokens, start and end included
    dropout: float = 0.0
    fused: bool = True  # F.scaled_dot_product_attention in training
    # optimisation
    train_only: str = "all"  # "all", "cross_attention" (cross-attention layers only) or "prefix" (prefix mapper only)
    epochs: int = 5
    group_by_length: bool = False  # batches of captions of similar length: far less padding (flickr30k preset)
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 200
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    amp: bool = True  # bfloat16 autocast, on CUDA only
    seed: int = 0
    device: str = "auto"  # "auto" (CUDA if present), "cpu", "cuda", "cuda:1", ...
    # evaluation and checkpoints
    val_images: int = 500  # images captioned for validation BLEU each epoch
    out: str = "runs/shapes"  # checkpoints, metrics.jsonl and loss_curve.png go here
    checkpoint_every: int = 200  # steps; a checkpoint is also written at the end of every epoch
    resume: bool = False  # continue from out/checkpoint.pt
    stop_after: int = 0  # stop (with a checkpoint) after this many steps; 0 = run to the end. For tests.


PRESETS = {
    "tiny": {},  # the defaults above: built-in shapes, CPU, minutes
    "flickr30k": dict(
        data="", encoder="clip", tokenizer="word", min_count=5, width=512, layers=6, heads=8, prefix_len=10,
        max_len=40, dropout=0.1, epochs=10, group_by_length=True, batch_size=64, lr=3e-4, warmup_steps=1000,
        label_smoothing=0.1, checkpoint_every=1000, out="runs/flickr30k",
    ),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny")
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
        else:
            parser.add_argument(flag, type=f.type, default=None)
    args = parser.parse_args(argv)
    values = dict(PRESETS[args.preset])
    values.update({k: v for k, v in vars(args).items() if v is not None and k != "preset"})
    config = TrainConfig(**values)
    if config.data != "shapes" and not (config.data and config.images):
        parser.error("a caption file needs --data CAPTIONS and --images FOLDER")
    if config.encoder == "clip" and config.data == "shapes":
        parser.error("--encoder clip reads an images folder; use it with --data CAPTIONS --images FOLDER")
    return config


# ----------------------------------------------------------------------------------------------
# Data: each split is a list of images (a row in the image source) with their reference captions.


@dataclass
class Split:
    rows: np.ndarray  # row of each image in the image source
    references: list  # reference captions per image (what a generated caption is scored against)
    targets: list  # captions per image that training teaches


class PixelSource:
    """Images held in memory as uint8, encoded by the trainable ViT on every step."""

    def __init__(self, pixels):
        self.pixels = pixels  # (n, 3, S, S) uint8

    def features(self, model, rows, device):
        return model.encode(normalize(self.pixels[torch.as_tensor(rows)].to(device)))


class CachedFeatureSource:
    """Frozen CLIP features read from the memory-mapped cache; no image is decoded again."""

    def __init__(self, cache, vit):
        self.cache = cache
        self.vit = vit  # the frozen encoder the features came from, kept in the checkpoint

    def features(self, model, rows, device):
        return self.cache.get(rows, device)


def load_shapes(config):
    splits, pixels, start = {}, [], 0
    for name, count in [("train", config.shapes_train), ("val", config.shapes_val), ("test", config.shapes_test)]:
        scenes = make_split(name, count, config.image_size, config.seed)
        pixels.append(torch.from_numpy(np.stack([s.image for s in scenes])).permute(0, 3, 1, 2))  # (n, 3, S, S)
        references = [s.captions for s in scenes]
        # The first reference names the objects in reading order (left or top first). Teaching only that
        # order lets the model learn in minutes; both orders are accepted when scoring.
        targets = references if config.train_on_all_references else [r[:1] for r in references]
        splits[name] = Split(np.arange(start, start + count), references, targets)
        start += count
    return splits, PixelSource(torch.cat(pixels).contiguous())


def caption_splits(captions, row_of):
    """train / val / test Splits of a CaptionSet, keeping the images `row_of` maps to an image-source row."""
    splits = {}
    for split in ("train", "val", "test"):
        kept = [n for n in captions.names(split) if n in row_of]
        refs = [captions.captions[n] for n in kept]
        splits[split] = Split(np.array([row_of[n] for n in kept], dtype=np.int64), refs, refs)
    return splits


def load_caption_file(config, device):
    captions = read_captions(config.data, seed=config.seed)
    dropped = check_images(captions, config.images, config.skip_missing)
    if dropped:
        print(f"skipping {dropped} captioned images missing from {config.images}")
    names = sorted(captions.captions)
    if config.encoder == "clip":
        from data.features import extract_features
        from model.clip import load_clip_vit

        pretrained = None if config.clip_pretrained == "none" else config.clip_pretrained
        vit, preprocess = load_clip_vit(config.clip_model, pretrained)
        # On a CPU the encoder's threads already use every core: loader workers only compete with them
        # (bench/feature_extraction.py: 2 workers ran at 0.88x of none on 2 cores). On a GPU they feed it.
        workers = 0 if device.type == "cpu" else min(8, os.cpu_count() or 1)
        cache = extract_features(vit.to(device), preprocess, config.clip_model, config.images, names,
                                 config.feature_cache, num_workers=workers, device=device)
        source, row_of = CachedFeatureSource(cache, vit.cpu()), {n: cache.index[n] for n in cache.usable()}
    else:
        arrays, row_of = [], {}
        for name in tqdm(names, desc="images", unit="img"):
            try:
                arrays.append(load_image_array(Path(config.images) / name, config.image_size))
                row_of[name] = len(arrays) - 1
            except ImageError as e:
                tqdm.write(f"skipped {e}")
        if len(row_of) < len(names):
            print(f"{len(names) - len(row_of)} of {len(names)} images could not be read and were skipped")
        source = PixelSource(torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous())
    splits = caption_splits(captions, row_of)
    if not len(splits["train"].rows):
        raise SystemExit(f"{config.data}: no training images left")
    return splits, source


def build_tokenizer(config, splits):
    if config.tokenizer == "bpe":
        return BPETokenizer()
    return WordTokenizer.build([c for caps in splits["train"].targets for c in caps], config.min_count)


# ----------------------------------------------------------------------------------------------
# Model: a scratch ViT trained with the decoder, or a frozen CLIP ViT whose features are cached.


def build_model(config, tokenizer, source):
    if config.encoder == "clip":
        vit = source.vit.config
        clip_dim, patch_dim = vit.output_dim, vit.width
    else:
        vit = ViTConfig(config.image_size, config.patch_size, config.vit_width, config.vit_layers, config.vit_heads,
                        output_dim=config.vit_width, fused=config.fused, sincos_init=True)
        clip_dim = patch_dim = config.vit_width
    decoder = DecoderConfig(
        vocab_size=tokenizer.vocab_size, max_len=config.max_len, width=config.width, layers=config.layers,
        heads=config.heads, prefix_len=config.prefix_len, clip_dim=clip_dim, patch_dim=patch_dim,
        prefix_mapper=config.prefix_mapper, cross_attention=config.cross_attention, dropout=config.dropout,
        fused=config.fused,
    )
    model = Captioner(CaptionerConfig(vit, decoder, frozen_encoder=config.encoder == "clip"))
    if config.encoder == "clip":
        model.encoder.load_state_dict(source.vit.state_dict())
    return model


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


def lr_at(step, config, total_steps):
    """Linear warm-up, then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ----------------------------------------------------------------------------------------------
# Evaluation


def batches(pairs, size):
    for i in range(0, len(pairs), size):
        yield pairs[i : i + size]


@torch.no_grad()
def evaluate_loss(model, source, pairs, tokenizer, device, batch_size=64):
    """Teacher-forced loss and next-token accuracy over (image, caption) pairs.

    The pairs go in order of length, so batches carry almost no padding; the sums do not depend on order.
    """
    model.eval()
    loss_sum, correct, count = 0.0, 0, 0
    for chunk in batches(sorted(pairs, key=lambda pair: len(pair[1])), batch_size):
        tokens, targets, lengths = make_batch([ids for _, ids in chunk], tokenizer.pad_id)
        clip_embed, patches = source.features(model, [row for row, _ in chunk], device)
        logits = model(tokens.to(device), clip_embed, patches, lengths.to(device)).logits.float()
        targets = targets.to(device)
        loss_sum += F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="sum").item()
        real = targets != -100
        correct += (logits.argmax(-1)[real] == targets[real]).sum().item()
        count += real.sum().item()
    model.train()
    return loss_sum / count, correct / count


@torch.no_grad()
def caption_split(model, source, split, tokenizer, device, limit=None, batch_size=256):
    """Greedy captions for the first `limit` images of a split."""
    model.eval()
    rows = split.rows[:limit]
    captions = []
    for i in range(0, len(rows), batch_size):
        clip_embed, patches = source.features(model, rows[i : i + batch_size], device)
        out = generate(model.decoder, clip_embed, patches, tokenizer.bos_id, tokenizer.eos_id)
        captions += [tokenizer.decode(row.tolist()) for row in out]
    model.train()
    return captions


def caption_scores(captions, references):
    """Exact-match rate (the caption equals a reference, ignoring case and punctuation) and the COCO
    caption metrics (BLEU-1..4, CIDEr-D, ROUGE-L) with sacreBLEU, as evaluate.py reports them."""
    exact = np.mean([ptb_tokenize(c) in {ptb_tokenize(r) for r in refs} for c, refs in zip(captions, references)])
    return float(exact), score_captions(captions, references)


# ----------------------------------------------------------------------------------------------
# Checkpoints (written atomically by model/checkpoint.py): the unwrapped model's state_dict, optimizer,
# configs as dicts, step, tokenizer, RNG.


def checkpoint_state(model, optimizer, config, tokenizer, step, preprocess):
    return {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "tokenizer": tokenizer.to_dict(),
        "preprocess": preprocess,
        "step": step,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def write_loss_curve(log_path, png_path):
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's plotting backend alone

    rows = [json.loads(line) for line in open(log_path)]
    train = [(r["step"], r["train_loss"]) for r in rows if "train_loss" in r]
    val = [(r["step"], r["val_loss"]) for r in rows if "val_loss" in r]
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", lw=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("cross-entropy")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


# ----------------------------------------------------------------------------------------------
# The training loop


def epoch_batches(pairs, config, epoch):
    """The batches of one epoch, (steps, batch_size) indices into `pairs`; the last partial batch is dropped.

    Each epoch has its own seeded order, so a resumed run sees exactly the batches an uninterrupted one
    would. With group_by_length, captions are sorted by length within pools of 50 batches and the batches
    are then shuffled: each batch holds captions of similar length, so little of it is padding (on
    Flickr30k, random batches are 57% padding; bench/flickr_epoch.py measures what that costs).
    """
    generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
    B = config.batch_size
    order = torch.randperm(len(pairs), generator=generator)[: len(pairs) // B * B]
    if not config.group_by_length:
        return order.view(-1, B)
    lengths = torch.tensor([len(pairs[i][1]) for i in order.tolist()])
    pool = 50 * B
    order = torch.cat([order[i : i + pool][lengths[i : i + pool].argsort(stable=True)]
                       for i in range(0, len(order), pool)])
    batches = order.view(-1, B)  # (steps, B), similar lengths in each row
    return batches[torch.randperm(len(batches), generator=generator)]


def train_step(model, optimizer, params, source, chunk, tokenizer, config, device, lr):
    """One optimisation step on a batch of (row, caption ids) pairs; returns the loss."""
    tokens, targets, lengths = make_batch([ids for _, ids in chunk], tokenizer.pad_id)
    tokens, targets, lengths = tokens.to(device), targets.to(device), lengths.to(device)
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"):
        clip_embed, patches = source.features(model, [row for row, _ in chunk], device)
        logits = model(tokens, clip_embed, patches, lengths).logits
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(),
                               label_smoothing=config.label_smoothing)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
    optimizer.step()
    return loss


def main(argv=None):
    config = parse_args(argv)
    started = time.time()
    out = Path(config.out)
    checkpoint_path, log_path = out / "checkpoint.pt", out / "metrics.jsonl"
    resumed = None
    if config.resume:
        if not checkpoint_path.exists():
            raise SystemExit(f"{checkpoint_path}: no checkpoint to resume from")
        resumed = load_checkpoint(checkpoint_path)
        saved = dict(resumed["train_config"], resume=True, stop_after=config.stop_after)
        config = TrainConfig(**saved)  # the run continues with the settings it started with
    torch.manual_seed(config.seed)
    device = pick_device(config.device)
    out.mkdir(parents=True, exist_ok=True)

    splits, source = load_shapes(config) if config.data == "shapes" else load_caption_file(config, device)
    tokenizer = tokenizer_from_dict(resumed["tokenizer"]) if resumed else build_tokenizer(config, splits)
    model = build_model(config, tokenizer, source).to(device)
    params = trainable_parameters(model, config.train_only)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    preprocess = ({"kind": "squash", "image_size": config.image_size, "mean": CLIP_MEAN, "std": CLIP_STD}
                  if config.encoder == "scratch" else dict(source.vit.preprocess_cfg, kind="openclip"))

    train_pairs = make_pairs(splits["train"].rows, splits["train"].targets, tokenizer, config.max_len)
    val_pairs = make_pairs(splits["val"].rows, splits["val"].targets, tokenizer, config.max_len)  # what is taught
    steps_per_epoch = len(train_pairs) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    step = 0
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        step = resumed["step"]
        torch.set_rng_state(resumed["rng"])
        if resumed["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(resumed["cuda_rng"])
        print(f"resumed from {checkpoint_path} at step {step}")
    elif log_path.exists():
        log_path.unlink()  # a fresh run starts a fresh log
    n_params = sum(p.numel() for p in params)
    print(f"{len(train_pairs):,} training captions, {len(splits['val'].rows):,} validation images, "
          f"vocabulary {tokenizer.vocab_size:,}, {n_params / 1e6:.2f}M trainable parameters, {device}")

    model.train()
    order = None  # this epoch's batches, made when an epoch starts (or a resumed run starts inside one)
    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step")
    while step < total_steps:
        epoch, offset = divmod(step, steps_per_epoch)
        if offset == 0 or order is None:
            order = epoch_batches(train_pairs, config, epoch)
        chunk = [train_pairs[i] for i in order[offset].tolist()]
        loss = train_step(model, optimizer, params, source, chunk, tokenizer, config, device,
                          lr_at(step, config, total_steps))
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}", epoch=epoch + 1)
        record = {"step": step, "epoch": epoch + 1, "train_loss": round(loss.item(), 5),
                  "lr": optimizer.param_groups[0]["lr"]}
        epoch_end = step % steps_per_epoch == 0
        if epoch_end:
            val_loss, token_acc = evaluate_loss(model, source, val_pairs, tokenizer, device, config.batch_size)
            val = splits["val"]
            captions = caption_split(model, source, val, tokenizer, device, config.val_images)
            exact, scores = caption_scores(captions, val.references[: config.val_images])
            record.update(val_loss=round(val_loss, 5), val_token_accuracy=round(token_acc, 5),
                          val_exact=round(exact, 5), **{f"val_{k}": round(v, 5) for k, v in scores.items()})
            tqdm.write(f"epoch {epoch + 1}: val loss {val_loss:.4f}, token accuracy {token_acc:.3f}, "
                       f"BLEU-4 {scores['BLEU-4']:.3f}, CIDEr-D {scores['CIDEr-D']:.3f}, "
                       f"exact captions {exact:.1%}  ({time.time() - started:.0f}s)")
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        stopping = config.stop_after and step >= config.stop_after
        if epoch_end or step % config.checkpoint_every == 0 or step == total_steps or stopping:
            save_checkpoint(checkpoint_path, checkpoint_state(model, optimizer, config, tokenizer, step, preprocess))
        if stopping:
            bar.close()
            print(f"stopped after step {step}; continue with --resume")
            return model
    bar.close()
    write_loss_curve(log_path, out / "loss_curve.png")

    test = splits["test"] if len(splits["test"].rows) else splits["val"]
    captions = caption_split(model, source, test, tokenizer, device)
    exact, scores = caption_scores(captions, test.references)
    name = "test" if test is splits["test"] else "val"
    print(f"\n{name} split, {len(captions)} images: exact captions {exact:.1%}, "
          + ", ".join(f"{k} {v:.3f}" for k, v in scores.items()))
    for caption, refs in list(zip(captions, test.references))[:5]:
        print(f"  {caption!r:60}  reference: {refs[0]!r}")
    summary = {"step": step, f"{name}_exact": exact, **{f"{name}_{k}": v for k, v in scores.items()},
               "seconds": round(time.time() - started, 1)}
    with open(log_path, "a") as f:
        f.write(json.dumps(summary) + "\n")
    print(f"checkpoint: {checkpoint_path}  metrics: {log_path}  loss curve: {out / 'loss_curve.png'}  "
          f"({time.time() - started:.0f}s)")
    return model


if __name__ == "__main__":
    main()
