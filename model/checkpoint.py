"""Model folders and training checkpoints, written atomically and read back with one-line errors.

A model folder is what people share: `config.json` (the model's configuration, plus the tokenizer and
the preprocessing that whoever captions with it needs) and `model.safetensors` (the weights). Neither
file can carry code.

A training checkpoint (`checkpoint.pt`) also holds what --resume needs: the optimizer, the step, the
RNG state, the training configuration. It holds only tensors and plain Python values (dicts, lists,
numbers, strings) and is read with torch.load(weights_only=True), which refuses anything else: opening
a checkpoint someone handed you runs none of their code.
"""

import errno
import json
import os
import pickle
import shutil
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from model.caption_model import CaptionModel, CaptionModelConfig
from model.errors import CaptionerError
from model.files import read_json, regular_file

MODEL_FORMAT = "captioner-model"  # config.json's "format", so a foreign JSON file is recognised as such
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
CONFIG_KEYS = {"format", "version", "model", "tokenizer", "preprocess"}


class CheckpointError(CaptionerError):
    """A model file that cannot be used; the message names the file."""


class WriteError(CaptionerError):
    """A file that could not be written (a full disk, a quota, a folder that refuses it); the message names it."""


WRITE_FAILURES = (OSError, RuntimeError, SafetensorError)  # torch.save says RuntimeError when its writes fail


def replace_atomically(path, write):
    """write(temporary path), then rename it to `path`: a crash leaves the old file, never half a new one. Whatever
    stops the write (a full disk, Ctrl-C) removes the temporary file; a failed write is one WriteError naming `path`."""
    tmp = Path(str(path) + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, WRITE_FAILURES):
            raise write_error(path, e) from None
        raise


def write_error(path, e):
    """One line for a write that failed: the disk is full, or why it failed and the space left."""
    code = getattr(e, "errno", None)
    if code in (errno.ENOSPC, errno.EDQUOT):
        why = "the disk is full" if code == errno.ENOSPC else "the disk quota is used up"
    else:  # torch.save's RuntimeError ("unexpected pos ...") tells no errno: say what it said and the space left
        text = getattr(e, "strerror", None) or str(e).strip()
        reason = text.splitlines()[0][:120] if text else type(e).__name__
        try:
            free = f"; {shutil.disk_usage(Path(path).parent).free / 1e6:,.0f} MB free there"
        except OSError:
            free = ""
        why = f"the write failed ({reason}{free})"
    kept = "the file as it was before is untouched" if Path(path).exists() else "nothing was written"
    return WriteError(f"{path}: not written: {why}; {kept}")


# ----------------------------------------------------------------------------------------------
# Training checkpoints


def save_checkpoint(path, state):
    replace_atomically(path, lambda tmp: torch.save(state, tmp))


MAX_DEPTH = 32  # a checkpoint's deepest value is 5 levels down: optimizer, "param_groups", 0, "betas", 0
MAX_UNPACKED = 4  # torch.save stores its zip entries uncompressed: they unpack to no more than the file's size


def load_weights_only(path, error=CheckpointError, hint=""):
    """torch.load(path, weights_only=True): tensors and plain values only, so no code in the file runs.
    Any failure is raised as `error`, one sentence naming the file (`hint` is added to a refusal). A file
    that would unpack to far more than it holds, or whose values nest too deep, is refused before it costs more."""
    regular_file(path, error)
    unpacked = unpacked_size(path, error)
    if unpacked > MAX_UNPACKED * os.path.getsize(path) + 2**20:
        raise error(f"{path}: refused: its entries unpack to {unpacked:,} bytes, {unpacked // os.path.getsize(path):,} "
                    "times the file's size (torch.save stores them uncompressed)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # the weights-only reader met something other than tensors and plain values
        raise error(f"{path}: refused: it holds Python objects that could run code when loaded{hint}") from None
    except Exception as e:  # torch raises several types for a cut-off or foreign file
        raise error(f"{path}: damaged or truncated, torch.load failed ({type(e).__name__})") from None
    refuse_unsafe_values(state, path, error)
    return state


def unpacked_size(path, error):
    """The bytes the entries of torch.save's zip archive unpack to, as the archive's directory says, read before
    any entry is unpacked (a deflated entry of zeros unpacks to a thousand times its size). 0 for a file that
    is not a zip archive (torch's old format, or no checkpoint at all: torch.load says which)."""
    try:
        if not zipfile.is_zipfile(path):
            return 0
        with zipfile.ZipFile(path) as archive:
            return sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError):
        raise error(f"{path}: damaged or truncated, its zip directory cannot be read") from None


def refuse_unsafe_values(state, path, error):
    """Refuse, as `error` naming `path`, values nested more than MAX_DEPTH levels deep, or a tensor that has more
    elements than its storage holds (a view with stride 0, as torch.expand makes: a small file that unfolds into
    gigabytes when copied). Each value is visited once, however often it is shared: 40 levels of a list that
    holds the next list twice make 2^40 paths but 41 lists."""
    seen, stack = set(), [(state, 0, ())]  # (value, depth, the keys that lead to it)
    while stack:
        value, depth, keys = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if depth > MAX_DEPTH:
            raise error(f"{path}: refused: its values are nested more than {MAX_DEPTH} levels deep")
        if isinstance(value, torch.Tensor) and value.numel() * value.element_size() > value.untyped_storage().nbytes():
            raise error(f"{path}: refused: tensor {spelled(keys)} reuses its stored values (a stride of 0), so "
                        "copying it could take far more memory than the file holds")
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
        stack += reversed([(item, depth + 1, (keys, key)) for key, item in items])  # the first child is next


def spelled(keys):
    """The keys that lead to a value, linked as ((((), a), b), c) by refuse_unsafe_values, as Python spells the
    lookup: a['b']['c']."""
    path = []
    while keys:
        keys, key = keys
        path.append(key)
    first, *rest = reversed(path)
    return str(first)[:80] + "".join(f"[{key!r:.80}]" for key in rest)


def load_safetensors(path, error=CheckpointError):
    """A safetensors file's tensors (safetensors holds no code); a broken file is `error`, naming it."""
    regular_file(path, error)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def safetensors_shapes(path, error=CheckpointError):
    """{name: shape} of a safetensors file, read from its header alone (no tensor is loaded)."""
    regular_file(path, error)
    try:
        with safe_open(str(path), "pt") as f:
            return {name: tuple(f.get_slice(name).get_shape()) for name in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise error(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None


def meta_shapes(build):
    """{name: shape} of the state dict of the module build() makes, built on the meta device: sizes only,
    no memory for the tensors, so a configuration can be checked against its weights before it costs any."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in build().state_dict().items()}


def shape_difference(expected, found, strict=True):
    """The first way the weights' {name: shape} `found` differ from the module's `expected`, in words, or None.
    strict=False allows weights the file lacks (layers left as initialised)."""
    for name, shape in expected.items():
        if name not in found:
            if strict:
                return f"missing key {name}"
        elif tuple(found[name]) != tuple(shape):
            return f"{name} is {tuple(found[name])} in the file, {tuple(shape)} in the configuration"
    unexpected = sorted(set(found) - set(expected))
    return f"unexpected key {unexpected[0]}" if unexpected else None


def load_checkpoint(path):
    """A training checkpoint as a dict, read without running any code it might carry."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint")
    state = load_weights_only(path, hint="; if it is a checkpoint you made yourself, convert it with "
                                         "python -m captioner.convert")
    missing = {"model", "model_config", "tokenizer", "preprocess"} - set(state if isinstance(state, dict) else ())
    if missing:
        raise CheckpointError(f"{path}: not a captioner checkpoint (it lacks {', '.join(sorted(missing))})")
    usable_weights(state["model"], path)  # for generate.py, the server and --resume alike
    return state


def usable_weights(weights, where, error=CheckpointError):
    """`weights` if they are a dict of tensors a model can caption with, else `error` naming `where`: integers or
    booleans (load_state_dict would cast them to floats without a word: an int8 file captions "square square
    ...") and values that are not finite (NaN weights caption "" greedily, and sampling fails every time)."""
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise error(f"{where}: the weights are not a dict of tensors")
    for name, t in weights.items():
        if not t.is_floating_point():
            raise error(f"{where}: refused: {name} holds {t.dtype} numbers, where the model's weights are floating-point")
        total = t.sum(dtype=torch.float64)  # NaN or infinity if any value is; a sum of float32s never overflows it
        if not torch.isfinite(total):
            raise error(f"{where}: refused: {name} holds values that are not finite (NaN or infinity)")
    return weights


def model_config(config_dict, where):
    """A CaptionModelConfig from its dict, or one line saying what is wrong with it (naming `where`)."""
    try:
        return CaptionModelConfig.from_dict(config_dict, where)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def check_fits(config, shapes, config_where, weights_where):
    """Refuse weights whose {name: shape} differ from the model `config` describes, before anything is allocated:
    a config that asks for more than its weights hold costs nothing."""
    problem = shape_difference(meta_shapes(lambda: CaptionModel(config)), shapes)
    if problem:
        raise CheckpointError(f"{weights_where}: weights do not fit the configuration in {config_where} ({problem})")


def model_from_state(config_dict, weights, config_where, weights_where):
    """Build the model a config describes and load `weights` into it, or say in one line what does not fit."""
    config = model_config(config_dict, config_where)
    if not isinstance(weights, dict) or not all(isinstance(t, torch.Tensor) for t in weights.values()):
        raise CheckpointError(f"{weights_where}: the weights are not a dict of tensors")
    check_fits(config, {name: t.shape for name, t in weights.items()}, config_where, weights_where)
    return built(config, weights)


def built(config, weights):
    """The model `config` describes with `weights` loaded: call once check_fits has passed."""
    model = CaptionModel(config)
    model.load_state_dict(weights)
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
    if not path.exists():
        raise CheckpointError(f"{path}: missing; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    config = read_json(path, CheckpointError)
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
    weights_path, where = folder / WEIGHTS_FILE, f"{folder / CONFIG_FILE}, model"
    if not weights_path.exists():
        raise CheckpointError(f"{weights_path}: missing; a model folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    model_cfg = model_config(config["model"], where)
    check_fits(model_cfg, safetensors_shapes(weights_path), where, weights_path)  # the header alone, before reading
    weights = usable_weights(load_safetensors(weights_path), weights_path)  # the tensors the header described
    model = built(model_cfg, weights)
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
