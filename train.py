"""Train a captioner.

    python train.py                          # built-in shapes, ViT trained from scratch, a few minutes on CPU
    python train.py --preset flickr30k --data dataset_flickr30k.json --images flickr30k-images/
    python train.py --preset flickr30k-gpt2 --gpt2 distilgpt2/ --data dataset_flickr30k.json --images flickr30k-images/
    python train.py --out runs/shapes --resume   # continue exactly where a run stopped

Writes OUT/checkpoint.pt (for --resume), OUT/model/ (config.json + model.safetensors: the model to
share, caption with and serve), OUT/best/ (the same, for the epoch with the best validation score),
train_config.json (the run's settings: --config FILE starts another run from them), metrics.jsonl,
loss_curve.png and metric_curves.png; with --tensorboard, OUT/tensorboard/ for a live view. OUT/.lock is held
while a run writes to OUT: one run per --out at a time.

Several processes: `torchrun --nproc_per_node N train.py ...` (DistributedDataParallel; each process
takes its share of every batch, process 0 alone validates, logs and writes files).

This file is the command: its flags (one per field of TrainConfig, training/config.py) and
main(). The run itself is training.train (training/): set it up (training/setup.py), the loop
(training/loop.py), the final report (training/evaluation.py).
"""

import argparse
import contextlib
import dataclasses
import os
import shlex
import signal
import sys
import threading
from pathlib import Path

from captioner.flags import add_dataclass_flags, field_comments, field_sections, shown
from model.errors import CaptionerError
from model.files import read_json
from training import train
from training.config import DERIVED, PRESETS, TrainConfig, config_with
from training.evaluation import BEST_METRICS

# ----------------------------------------------------------------------------------------------
# Configuration: TrainConfig (training/config.py) and its presets; one flag per field, grouped by purpose.


NESTED = {f.name: f.type for f in dataclasses.fields(TrainConfig) if dataclasses.is_dataclass(f.type)}  # vit, decoder


def flag_groups():
    """--help's groups, in order: (title, part of TrainConfig, its class, fields without a flag there).

    TrainConfig's own fields (part None) are grouped by the sections of its source (data, model, optimisation,
    validation, run, logging); a nested config's fields (part "vit" or "decoder": --vit-*, --decoder-*) follow
    their section's, titled "SECTION: the comment on its field" (e.g. "model: the decoder")."""
    sections, comments = field_sections(TrainConfig), field_comments(TrainConfig)
    groups = []
    for section in dict.fromkeys(sections.values()):  # each once, in the source's order
        here = [name for name in sections if sections[name] == section]
        groups.append((section, None, TrainConfig, set(sections) - set(here)))
        groups += [(f"{section}: {comments[name]}", name, NESTED[name], DERIVED[name])
                   for name in here if name in NESTED]
    return groups


def preset_values(preset, part):
    """A preset's values for one part of TrainConfig: "vit", "decoder", or None for its own fields."""
    values = PRESETS[preset]
    return values.get(part, {}) if part else {k: v for k, v in values.items() if k not in NESTED}


def add_flags(parser):
    """One flag per field of TrainConfig and of its nested configs, in flag_groups(); each flag's help shows
    the other presets' values beside the default. Returns {argparse dest: (part, field name)}."""
    fields, others = {}, [p for p in PRESETS if p != "tiny"]  # tiny's values are the defaults
    for title, part, cls, skip in flag_groups():
        notes = {}
        for p in others:
            for name, value in preset_values(p, part).items():
                notes[name] = notes.get(name, "") + f"; {p}: {shown(value)}"
        prefix = part + "-" if part else ""  # --lr, --vit-width, --decoder-layers
        added = add_dataclass_flags(parser, cls, prefix, skip, preset_values("tiny", part), notes, title)
        fields.update({dest: (part, name) for dest, name in added.items()})
    return fields


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="tiny",
                        help="starting values, which any other flag changes (default: tiny)")
    parser.add_argument("--config", metavar="FILE", help="start from a run's settings instead of a preset: the "
                        "train_config.json every run writes in its --out folder; other flags change them")
    fields = add_flags(parser)
    args = parser.parse_args(argv)
    given = {part: {} for part in NESTED}
    for dest, (part, name) in fields.items():
        if getattr(args, dest) is not None:
            (given[part] if part else given)[name] = getattr(args, dest)
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
# The command


class Stopped(KeyboardInterrupt):
    """SIGTERM, raised where the run is, as Ctrl-C's KeyboardInterrupt is: temporary files go, the lock is freed."""

    signum = signal.SIGTERM


@contextlib.contextmanager
def sigterm_stops():
    """SIGTERM raises Stopped while the run trains (only the main thread may set a handler; a test's thread doesn't)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        raise Stopped()

    before = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def stopped(config, interrupt):
    """One line for a run stopped by Ctrl-C or SIGTERM: the command that continues it. Exit status 128 + signal."""
    signum = getattr(interrupt, "signum", signal.SIGINT)
    if os.environ.get("RANK", "0") == "0":  # under torchrun, process 0 says it once
        name = signal.Signals(signum).name
        if (Path(config.out) / "checkpoint.pt").exists():
            print(f"stopped by {name}; continue from the last checkpoint with: python train.py --out "
                  f"{shlex.quote(config.out)} --resume", file=sys.stderr)
        else:
            print(f"stopped by {name} before the first checkpoint; nothing to resume, run the command again",
                  file=sys.stderr)
    return SystemExit(128 + signum)


def main(argv=None):
    config = parse_args(argv)
    try:
        with sigterm_stops():
            if not config.student_code:
                return train(config)
            from exercises import student_code, use_student_code

            with use_student_code(student_code(config.student_code, config.student_dir)):
                print(f"training with your code from {config.student_dir}/ for: {config.student_code}")
                return train(config)
    except CaptionerError as e:  # bad data, a broken file: one line naming it, no traceback (model/errors.py)
        raise SystemExit(f"error: {e}") from None
    except KeyboardInterrupt as e:  # Ctrl-C or SIGTERM: how to go on, not a traceback
        raise stopped(config, e) from None


def command(argv=None):
    """What `python train.py` runs. Under torchrun, a process that fails writes its error where torchrun
    reads it, so torchrun's summary names the failing process and its error (the others are stopped)."""
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return main(argv)
    from torch.distributed.elastic.multiprocessing.errors import record

    return record(main)(argv)


if __name__ == "__main__":
    command()
