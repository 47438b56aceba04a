"""Checkpoints: written atomically, read back with a one-line error when a file is not what it should be.

A checkpoint is a dict: the unwrapped model's state_dict, the optimizer's, the model and training
configs as plain dicts, the tokenizer's identity, the preprocessing, the step and the RNG state.
"""

import os
from pathlib import Path

import torch

from model.captioner import Captioner, CaptionerConfig


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file."""


def pick_device(name="auto"):
    """"auto": CUDA when present, else the CPU; any other name ("cpu", "cuda", "cuda:1") as given."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else torch.device(name)


def save_checkpoint(path, state):
    tmp = Path(str(path) + ".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)  # atomic: a crash leaves the previous checkpoint, never half of a new one


def load_checkpoint(path):
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for a cut-off or foreign file
        raise CheckpointError(f"{path}: damaged or truncated checkpoint, torch.load failed ({type(e).__name__})") from None
    missing = {"model", "model_config", "tokenizer", "preprocess"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"{path}: not a captioner checkpoint (it lacks {', '.join(sorted(missing))})")
    return state


def load_captioner(path, device="cpu"):
    """Rebuild the captioner from the checkpoint alone. Returns (model in eval mode, checkpoint dict)."""
    state = load_checkpoint(path)
    model = Captioner(CaptionerConfig.from_dict(state["model_config"]))
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise CheckpointError(f"{path}: weights do not fit the configuration saved with them ({first.strip()})") from None
    return model.to(device).eval(), state
