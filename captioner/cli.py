"""What the commands share: where to run (--device) and loading the model to caption with, or stopping
with one line that names the file."""

import torch

from captioner.api import Captioner
from model.checkpoint import CheckpointError

DEVICE_HELP = '"auto" (CUDA, else a Mac\'s MPS, else the CPU), "cpu", "cuda", "mps", ... (default: auto)'


def pick_device(name="auto"):
    """"auto": CUDA when present, else Apple's MPS (a Mac's GPU), else the CPU; any other name ("cpu",
    "cuda", "cuda:1", "mps") as given."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def add_device_flag(parser, when=""):
    """--device, as every command spells it; `when` prefixes the help (e.g. "with --model: ")."""
    parser.add_argument("--device", default="auto", help=when + DEVICE_HELP)


def load_captioner(path, device="auto", download=False):
    """The Captioner of a model folder, checkpoint or Hugging Face folder, on `device`, ready to caption image
    files; anything unusable stops the command with one line naming the file."""
    try:
        return Captioner.from_pretrained(path, pick_device(device), for_images=True, download=download)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
