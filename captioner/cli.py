"""What the commands share: where to run (--device) and loading the model to caption with, or stopping
with one line that names the file."""

import torch

from captioner.api import Captioner
from model.checkpoint import CheckpointError
from model.compiled import compile_steps

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


DTYPES = ("float32", "bfloat16", "float16")


def add_device_flag(parser, when=""):
    """--device and --dtype, as every command spells them; `when` prefixes the help (e.g. "with --model: ")."""
    parser.add_argument("--device", default="auto", help=when + DEVICE_HELP)
    parser.add_argument("--dtype", default="float32", choices=DTYPES,
                        help=when + "the weights' type while captioning: bfloat16 or float16 halve the weights' "
                                    "memory; the built-in model captions the same in all three (default: float32)")


def add_compile_flag(parser, when=""):
    """--compile: each cached decoding step through torch.compile (model/compiled.py)."""
    parser.add_argument("--compile", action="store_true",
                        help=when + "compile the decoder's step with torch.compile: faster steps after the first "
                                    "batch, which compiles (about 20 s on a CPU, which needs a C++ compiler); "
                                    "captions as without it")


def load_captioner(path, device="auto", download=False, dtype="float32", compile=False):
    """The Captioner of a model folder, checkpoint or Hugging Face folder, on `device` in `dtype`, its decoding
    steps compiled if asked, ready to caption image files; anything unusable stops the command with one line
    naming the file."""
    try:
        captioner = Captioner.from_pretrained(path, pick_device(device), for_images=True, download=download)
    except CheckpointError as e:
        raise SystemExit(f"error: {e}") from None
    if compile:
        compile_steps(captioner.model)
    return captioner.to(dtype=getattr(torch, dtype))
