"""A Flickr30k-sized epoch on cached CLIP features: time and peak memory, word vocabulary against BPE.

    python -m bench.flickr_epoch [--captions ../shared/data/flickr30k-captions.json] [--steps 16]

Captions: the real Flickr30k training split (29,000 images x 5 = 145,000 captions, Karpathy split).
Features: random, of ViT-B-32's shape (pooled 512, 49 x 768 patch tokens), written once as a feature
cache in the layout train.py reads (fp16 memory maps, 2.2 GB; --cache). Everything else is train.py's
`--preset flickr30k`: its model, optimizer, train_step and epoch_batches.

Four runs in one process, in alternating blocks of steps: each tokenizer with random batches (the
reference) and with batches grouped by caption length (the preset). A step's cost follows the length of
the batch's longest caption, so the timed batches are picked at evenly spaced quantiles of that length
among the epoch's batches, and an epoch is steps per epoch x their mean time. Padding is counted over
the whole epoch. Then, in one child process per tokenizer (a process's peak covers everything it ever
did): peak memory over the epoch's longest batches and the validation train.py runs after each epoch
(the loss on the val captions, greedy captions for 500 val images). With random weights no caption ends
early, so the validation time is an upper bound.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from captioner.api import Captioner
from captioner.cli import pick_device
from data.batches import epoch_batches, make_pairs
from data.captions import read_captions
from data.features import DONE, FeatureCache, create_feature_cache
from data.paths import SHARED_DATA
from data.sources import (
    CachedFeatureSource,
    batches_by_length,
    caption_splits,
    get_batch,
)
from data.tokenizer import build_tokenizer
from model.caption_model import build_caption_model
from model.clip import load_clip_vit
from training.config import config_with
from training.step import autocast_dtype, evaluate_loss, train_step

ROOT = Path(__file__).resolve().parents[1]

TOKENIZERS = ("word", "bpe")
POOLED, PATCHES = 512, (49, 768)  # ViT-B-32


def random_feature_cache(folder, names, seed=0):
    """A FeatureCache of random fp16 features for `names`, written once and reused."""
    folder = Path(folder)
    if (folder / "meta.json").exists() and json.loads((folder / "names.json").read_text()) == names:
        return FeatureCache(folder)
    create_feature_cache(folder, names, POOLED, *PATCHES, {"encoder": "random features (bench/flickr_epoch.py)"})
    rng = np.random.default_rng(seed)
    pooled = np.load(folder / "pooled.npy", mmap_mode="r+")
    patches = np.load(folder / "patches.npy", mmap_mode="r+")
    for start in tqdm(range(0, len(names), 1000), desc="random features"):
        rows = slice(start, start + 1000)
        pooled[rows] = rng.standard_normal(pooled[rows].shape, dtype=np.float32)
        patches[rows] = rng.standard_normal(patches[rows].shape, dtype=np.float32)
    pooled.flush()
    patches.flush()
    np.save(folder / "status.npy", np.full(len(names), DONE, np.uint8))
    return FeatureCache(folder)


class Run:
    """train.py's flickr30k preset with one tokenizer, on the random feature cache."""

    def __init__(self, tokenizer, grouped, captions, cache, vit, device):
        self.config = config_with("flickr30k", tokenizer=tokenizer, group_by_length=grouped, data="bench",
                                  images="bench")
        self.device = device
        self.splits = caption_splits(captions, cache.index)  # the cache holds the train and val images
        train_captions = [c for caps in self.splits["train"].targets for c in caps]
        self.tokenizer = build_tokenizer(tokenizer, train_captions, self.config.min_count)
        self.source = CachedFeatureSource(cache)
        self.model = build_caption_model(self.config.vit, self.config.decoder, self.tokenizer.vocab_size, vit)
        self.model = self.model.to(device).train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]  # train.py's --train-only all
        self.optimizer = torch.optim.AdamW(self.params, lr=self.config.lr, weight_decay=self.config.weight_decay)
        fp16 = autocast_dtype(device, self.config.amp) == torch.float16
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None  # as train.py does on a GPU without bf16
        self.captioner = Captioner(self.model, self.tokenizer, dict(vit.preprocess_cfg, kind="openclip"))
        max_len = self.config.decoder.max_len
        self.pairs = make_pairs(self.splits["train"].rows, self.splits["train"].targets, self.tokenizer, max_len)
        self.val_pairs = make_pairs(self.splits["val"].rows, self.splits["val"].targets, self.tokenizer, max_len)
        c = self.config
        self.batches = epoch_batches(self.pairs, c.batch_size, c.seed, 0, c.group_by_length)  # (steps, batch size)
        lengths = torch.tensor([len(ids) - 1 for _, ids in self.pairs])[self.batches]  # input tokens per caption
        self.padded = lengths.max(dim=1).values  # (steps,): each batch is as long as its longest caption
        self.padding = 1 - lengths.sum().item() / (self.padded.sum().item() * self.batches.size(1))

    def quantile_batches(self, count):
        """`count` batches at evenly spaced quantiles of padded length, shortest first."""
        by_length = self.padded.argsort(stable=True)
        return [int(by_length[int((i + 0.5) * len(by_length) / count)]) for i in range(count)]

    def timed_step(self, batch):
        pairs = [self.pairs[i] for i in self.batches[batch].tolist()]
        c = self.config
        sync(self.device)
        start = time.perf_counter()
        batch = get_batch(pairs, self.source, self.tokenizer.pad_id, self.device)
        loss = train_step(self.model, self.optimizer, self.params, batch, c.lr, c.grad_clip, c.label_smoothing,
                          autocast_dtype(self.device, c.amp), scaler=self.scaler)
        loss.item()  # waits for the step to finish, as train.py's progress bar does
        return time.perf_counter() - start

    def timed_validation(self):
        sync(self.device)
        start = time.perf_counter()
        evaluate_loss(self.model, batches_by_length(self.val_pairs, self.source, self.tokenizer.pad_id, self.device,
                                                    self.config.batch_size))
        self.captioner.caption_source(self.source, self.splits["val"].rows[: self.config.val_images])
        sync(self.device)
        return time.perf_counter() - start


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_memory_mib(device):
    """This process's peak resident memory (VmHWM, which, unlike getrusage, starts afresh in a child),
    and the GPU's peak allocation if there is a GPU."""
    status = Path("/proc/self/status").read_text()
    rss = int(status.split("VmHWM:")[1].split()[0]) / 1024  # kB
    gpu = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return rss, gpu


def setup(args):
    captions = read_captions(args.captions)
    names = sorted(captions.names("train") + captions.names("val"))
    cache = random_feature_cache(args.cache, names)
    vit, _ = load_clip_vit("ViT-B-32", pretrained=None)  # random weights; the frozen encoder train.py keeps
    return captions, cache, vit


def child(args, device):
    """Peak memory over the three longest batches, then including validation, and the validation time,
    of one tokenizer; printed as JSON."""
    run = Run(args.child, True, *setup(args), device)
    for batch in run.padded.argsort(descending=True)[:3].tolist():
        run.timed_step(batch)
    train_rss, train_gpu = peak_memory_mib(device)
    validation = run.timed_validation()
    rss, gpu = peak_memory_mib(device)
    print(json.dumps({"train_rss_mib": train_rss, "train_gpu_mib": train_gpu, "rss_mib": rss, "gpu_mib": gpu,
                      "validation_s": validation}))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--captions", default=str(SHARED_DATA / "flickr30k-captions.json"))
    p.add_argument("--cache", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "flickr_epoch_features"))
    p.add_argument("--steps", type=int, default=16, help="timed training steps per run")
    p.add_argument("--block", type=int, default=4, help="steps in a row before switching run")
    p.add_argument("--device", default="auto")
    p.add_argument("--child", choices=TOKENIZERS, help=argparse.SUPPRESS)  # see child()
    args = p.parse_args()
    if not os.path.exists(args.captions):
        raise SystemExit(f"{args.captions}: no such caption file; pass --captions (a Karpathy dataset_flickr30k.json)")
    torch.manual_seed(0)
    device = pick_device(args.device)
    if args.child:
        return child(args, device)

    captions, cache, vit = setup(args)
    runs = {(name, grouped): Run(name, grouped, captions, cache, vit, device)
            for name in TOKENIZERS for grouped in (False, True)}
    picks = {key: run.quantile_batches(args.steps) for key, run in runs.items()}
    for key, run in runs.items():
        run.timed_step(picks[key][args.steps // 2])  # warm-up
    times = {key: [] for key in runs}
    for start in tqdm(range(0, args.steps, args.block), desc="alternating blocks"):
        for key, run in runs.items():
            times[key] += [run.timed_step(b) for b in picks[key][start : start + args.block]]

    measured = {}
    for name in TOKENIZERS:
        command = [sys.executable, "-m", "bench.flickr_epoch", "--child", name, "--captions", args.captions, "--cache", args.cache,
                   "--device", args.device]
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        measured[name] = json.loads(out.strip().splitlines()[-1])

    threads = f"{torch.get_num_threads()} CPU threads" if device.type == "cpu" else torch.cuda.get_device_name(device)
    first = runs["word", False]
    print(f"\n{device} ({threads}); {len(first.pairs):,} training captions, batch {first.config.batch_size}, "
          f"decoder {first.config.decoder.layers} x {first.config.decoder.width}; mean of {args.steps} timed steps "
          "per run")
    print(f"{'tokenizer':9} {'vocab':>7} {'batches':8} {'padding':>8} {'s/step':>7} {'epoch (h:mm)':>13} "
          f"{'vs word, random':>16}")
    reference = statistics.mean(times["word", False])
    for (name, grouped), run in runs.items():
        step = statistics.mean(times[name, grouped])
        epoch = step * len(run.batches)
        print(f"{name:9} {run.tokenizer.vocab_size:7,} {'grouped' if grouped else 'random':8} {run.padding:8.0%} "
              f"{step:7.3f} {int(epoch // 3600):10}:{int(epoch % 3600 // 60):02} {step / reference:15.2f}x")
    print(f"\n{'tokenizer':9} {'validation (s)':>15} {'peak RSS, training (MiB)':>25} {'with validation':>16}"
          + ("" if device.type == "cpu" else f" {'peak GPU, training (MiB)':>25} {'with validation':>16}"))
    for name, m in measured.items():
        gpu = "" if device.type == "cpu" else f" {m['train_gpu_mib']:25,.0f} {m['gpu_mib']:16,.0f}"
        print(f"{name:9} {m['validation_s']:15.0f} {m['train_rss_mib']:25,.0f} {m['rss_mib']:16,.0f}{gpu}")


if __name__ == "__main__":
    main()
