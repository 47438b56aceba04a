"""Model folders and training checkpoints, written atomically and read back with one-line errors.

A model folder is what people share: `config.json` (the model's configuration, plus the tokenizer and
the preprocessing that whoever captions with it needs) and `model.safetensors` (the weights). Neither
file can carry code.

A training checkpoint (`checkpoint.pt`) also holds what --resume needs: the optimizer, the step, the
RNG state, the training configuration. It holds only tensors and plain Python values (dicts, lists,
numbers, strings) and is read with torch.load(weights_only=True), which refuses anything else: opening
a checkpoint someone handed you runs none of their code.
"""

import json
import os
import pickle
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from model.caption_model import CaptionModel, CaptionModelConfig

MODEL_FORMAT = "captioner-model"  # config.json's "format", so a foreign JSON file is recognised as such
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
CONFIG_KEYS = {"format", "version", "model", "tokenizer", "preprocess"}


class CheckpointError(ValueError):
    """A model file that cannot be used; the message names the file."""


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


def replace_atomically(path, write):
    """write(temporary path), then rename it to `path`: a crash leaves the old file, never half a new one."""
    tmp = Path(str(path) + ".tmp")
    write(tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------------
# Training checkpoints


def save_checkpoint(path, state):
    replace_atomically(path, lambda tmp: torch.save(state, tmp))


def load_weights_only(path, error=CheckpointError, hint=""):
    """torch.load(path, weights_only=True): tensors and plain values only, so no code in the file runs.
    Any failure is raised as `error`, one sentence naming the file (`hint` is added to a refusal)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the weights-only reader met something other than tensors and plain values
        raise error(f"{path}: refused: it holds Python objects that could run code when loaded{hint}") from None
    except Exception as e:  # torch raises several types for a cut-off or foreign file
        raise error(f"{path}: damaged or truncated, torch.load failed ({type(e).__name__})") from None


def load_safetensors(path, error=CheckpointError):
    """A safetensors file's tensors (safetensors holds no code); a broken file is `error`, naming it."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def read_json(path, error=CheckpointError):
    """A JSON file as Python values; one that is not JSON is `error`, naming it."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None


def load_checkpoint(path):
    """A training checkpoint as a dict, read without running any code it might carry."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    state = load_weights_only(path, hint="; if it is a checkpoint you made yourself, convert it with "
                                         "python -m captioner.convert")
    missing = {"model", "model_config", "tokenizer", "preprocess"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"{path}: not a captioner checkpoint (it lacks {', '.join(sorted(missing))})")
    return state


def model_from_state(config_dict, weights, config_where, weights_where):
    """Build the model a config describes and load `weights` into it, or say in one line what does not fit."""
    try:
        model = CaptionModel(CaptionModelConfig.from_dict(config_dict, config_where))
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        first = str(e).split("\n\t")[1] if "\n\t" in str(e) else str(e)
        raise CheckpointError(f"{weights_where}: weights do not fit the configuration in {config_where} "
                              f"({first.strip()})") from None
    return model


# ----------------------------------------------------------------------------------------------
# Model folders: config.json + model.safetensors


def save_model_folder(folder, model, tokenizer, preprocess):
    """Write `folder`/config.json and `folder`/model.safetensors. tokenizer and preprocess are plain dicts."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = {"format": MODEL_FORMAT, "version": 1, "model": model.config.to_dict(), "tokenizer": tokenizer,
              "preprocess": preprocess}
    weights = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    replace_atomically(folder / WEIGHTS_FILE, lambda tmp: save_file(weights, str(tmp), metadata={"format": "pt"}))
    replace_atomically(folder / CONFIG_FILE, lambda tmp: tmp.write_text(json.dumps(config, indent=1) + "\n"))


def read_model_config(folder):
    """config.json of a model folder as a dict, its top-level fields checked."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{path}: missing; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = read_json(path)
    if not isinstance(config, dict) or config.get("format") != MODEL_FORMAT:
        raise CheckpointError(f"{path}: not a captioner model config (its \"format\" is not {MODEL_FORMAT!r})")
    unknown, missing = sorted(set(config) - CONFIG_KEYS), sorted(CONFIG_KEYS - set(config))
    if unknown or missing:
        problem = f"unknown field {unknown[0]!r}" if unknown else f"missing field {missing[0]!r}"
        raise CheckpointError(f"{path}: {problem} (expected {', '.join(sorted(CONFIG_KEYS))})")
    if config["version"] != 1:
        raise CheckpointError(f"{path}: version {config['version']!r} is newer than this code reads (1)")
    return config


def load_model_folder(folder, device="cpu"):
    """Rebuild a model from its folder alone. Returns (model in eval mode, config dict)."""
    folder = Path(folder)
    config = read_model_config(folder)
    weights_path = folder / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointError(f"{weights_path}: missing; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    weights = load_safetensors(weights_path)
    model = model_from_state(config["model"], weights, f"{folder / CONFIG_FILE}, model", weights_path)
    return model.to(device).eval(), config


def load_model(path, device="cpu"):
    """A model folder or a training checkpoint -> (model in eval mode, dict with "tokenizer" and "preprocess")."""
    path = Path(path)
    if path.is_dir():
        return load_model_folder(path, device)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder or checkpoint (train one with `python train.py`)")
    state = load_checkpoint(path)
    model = model_from_state(state["model_config"], state["model"], f"{path} (model_config)", path)
    return model.to(device).eval(), state
