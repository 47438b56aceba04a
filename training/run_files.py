"""What a training run leaves behind besides its model folder: the checkpoint's state (only tensors and plain
values, written atomically by model/checkpoint.py, so --resume reads it with torch.load(weights_only=True)),
metrics.jsonl read back tolerantly, the loss and metric curves, and the optional TensorBoard log."""

import contextlib
import dataclasses
import json
import os
from pathlib import Path

import torch

from model.checkpoint import replace_atomically, write_error


@contextlib.contextmanager
def out_lock(out, lead):
    """Hold OUT/.lock while a run writes to OUT: a second run into the same folder stops in one line naming the
    first one's process. The lock is the kernel's (flock), so it goes with its process, however that ends. Under
    torchrun only process 0 (`lead`) writes files, and only it locks."""
    if not lead:
        yield
        return
    import fcntl  # POSIX; imported here so that the module still imports where it is missing

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    fd = os.open(out / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = os.read(fd, 32).decode("ascii", "replace").strip()
            raise SystemExit(f"error: another training is writing to {out} (pid {pid if pid.isdigit() else '?'}); "
                             "wait for it or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # releases the lock


def checkpoint_state(model, optimizer, scaler, config, tokenizer, step, preprocess, best):
    return {
        "best": best,  # the best validation score so far and the validations since it
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,  # float16's loss scale
        "model_config": model.config.to_dict(),
        "train_config": dataclasses.asdict(config),
        "tokenizer": tokenizer.to_dict(),
        "preprocess": preprocess,
        "step": step,
        "rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def append_record(log_path, record):
    """Add one line to metrics.jsonl. A write that fails (a full disk) takes back what it wrote of the line and is
    one WriteError naming the file: the records before it stay as they were."""
    with open(log_path, "a", encoding="utf-8") as f:
        size = f.tell()
        try:
            f.write(json.dumps(record) + "\n")
            f.flush()
        except OSError as e:
            f.truncate(size)
            raise write_error(log_path, e) from None


def keep_records_until(log_path, step):
    """Rewrite metrics.jsonl (atomically) without the records logged after `step`, a resumed run's checkpoint:
    a run killed between two checkpoints logged steps that the resumed run takes, and logs, again. A line cut
    short by the kill goes too (the next record would be appended to it)."""
    def kept(line):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            return False
        return not (isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] > step)

    lines = Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines() if Path(log_path).exists() else []
    keep = [line for line in lines if not line.strip() or kept(line)]
    if len(keep) < len(lines):
        replace_atomically(log_path, lambda tmp: tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8"))
        print(f"{log_path}: left out {len(lines) - len(keep)} records logged after step {step}, the checkpoint's")


def read_metrics(log_path):
    """metrics.jsonl's records. A line that is not JSON (the last one, cut short when a run was killed while
    writing it) is left out with a warning naming it, never a crash: the run's model matters more."""
    rows = []
    for n, line in enumerate(Path(log_path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            row = None
        if isinstance(row, dict):
            rows.append(row)
        elif line.strip():
            print(f"warning: {log_path}, line {n}: not a JSON record (cut short?); left out of the loss curve")
    return rows


def write_loss_curve(log_path, png_path):
    # no pyplot: leaves a notebook's plotting backend alone
    from matplotlib.figure import Figure

    rows = read_metrics(log_path)
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


CURVES = ("val_CIDEr-D", "val_BLEU-4", "val_ROUGE-L", "val_exact", "val_token_accuracy")


def write_metric_curves(log_path, png_path):
    """One panel per validation score, by epoch: what the loss curve does not show."""
    from matplotlib.figure import Figure

    rows = [r for r in read_metrics(log_path) if "val_loss" in r]
    fig = Figure(figsize=(3 * len(CURVES), 2.8))
    for ax, name in zip(fig.subplots(1, len(CURVES)), CURVES):
        points = [(r["epoch"], r[name]) for r in rows if name in r]
        if points:
            ax.plot(*zip(*points), "o-", lw=1)
        ax.set_title(name.removeprefix("val_"))
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    fig.suptitle("validation, after every epoch")
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)


def tensorboard_writer(folder):
    """A SummaryWriter logging to `folder`, or None (with one line) where tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("warning: --tensorboard needs `pip install tensorboard`; logging to metrics.jsonl only")
        return None
    return SummaryWriter(str(folder))
