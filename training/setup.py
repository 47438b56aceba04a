"""Setting up a training run: processes, data, model, optimizer (start_run), or a stopped run resumed exactly
(resume_state, restore). What a run holds while it trains is one Run."""

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from captioner.api import Captioner, hub_download
from captioner.cli import pick_device
from data.batches import make_pairs
from data.gpt2_bpe import GPT2Tokenizer
from data.images import CLIP_MEAN, CLIP_STD
from data.tokenizer import build_tokenizer, tokenizer_from_dict
from model.caption_model import build_caption_model
from model.checkpoint import (
    CheckpointError,
    check_fits,
    load_checkpoint,
    model_config,
    replace_atomically,
)
from model.config import to_dict
from model.hugging_face import gpt2_captioning_decoder, load_gpt2_weights
from training.config import TrainConfig
from training.data import load_data
from training.run_files import keep_records_until, tensorboard_writer
from training.step import autocast_dtype


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


def describe_fresh(names):
    """The kinds of parameters a pretrained decoder did not have, in a few words."""
    kinds = sorted({n.split(".")[2] if n.startswith("blocks.") else n.split(".")[0] for n in names})
    return ", ".join(kinds) or "nothing"


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
            decoder_config, gpt2_weights = (gpt2_captioning_decoder(config.gpt2, config.decoder) if config.gpt2
                                            else (config.decoder, None))
        model = build_caption_model(config.vit, decoder_config, tokenizer.vocab_size, frozen_vit).to(device)
        if resumed is not None:
            check_fits(model.config, {k: v.shape for k, v in resumed["model"].items()}, f"{where}, model_config", where)
        elif config.gpt2:
            fresh = load_gpt2_weights(model.decoder, gpt2_weights, config.gpt2)
            if lead:
                print(f"decoder from {config.gpt2}; new, trained from scratch: {describe_fresh(fresh)}")
    except ValueError as e:  # a GPT-2 folder or a checkpoint that cannot be used: one line naming the file
        raise SystemExit(f"error: {e}") from None
    return config, tokenizer, model


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
    max_len = model.decoder.max_caption  # captions are cut to what the positions hold
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
        if run.lead:  # records past the checkpoint are logged again as the run takes those steps again
            keep_records_until(run.log_path, run.step)
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


def finish(model, world):
    """Wait for every process (process 0 may still be writing files), then leave the process group."""
    if world > 1:
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return model
