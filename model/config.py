"""Configurations in and out of plain dicts (JSON, checkpoints): one way in, `from_dict`, and one way out,
`to_dict`, for every config dataclass of the project (ViTConfig, DecoderConfig, CaptionModelConfig and
TrainConfig, training/config.py), nested ones included.

A config class may name, in ADDED_LATER, the fields that files written before them lack: those take their
defaults, which is how such files behaved. ALL_FIELDS_OPTIONAL = True lets every field take its default
(a training configuration gains settings often; a model's shape must be stated in full)."""

import dataclasses


def to_dict(config):
    """A config dataclass (nested ones too) as plain dicts, lists and numbers."""
    return dataclasses.asdict(config)


def from_dict(cls, values, where):
    """cls(**values), nested configs from nested dicts, refusing a missing, unknown, mistyped or out-of-range
    field in one sentence (ValueError) that names `where`: the file and the part of it the values came from."""
    if not isinstance(values, dict):
        raise ValueError(f"{where}: expected an object of {cls.__name__} fields, found {type(values).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    optional = set(fields) if getattr(cls, "ALL_FIELDS_OPTIONAL", False) else set(getattr(cls, "ADDED_LATER", ()))
    unknown, missing = sorted(set(values) - set(fields)), sorted(set(fields) - set(values) - optional)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r} (a {cls.__name__} has {', '.join(fields)})")
    if missing:
        raise ValueError(f"{where}: missing field {missing[0]!r}")
    values = dict(values)
    for name, value in values.items():
        kind = fields[name].type
        if dataclasses.is_dataclass(kind) and value is not None:
            values[name] = from_dict(kind, value, f"{where}, {name}")
        elif not fits(kind, value):
            raise ValueError(f"{where}: field {name!r} should be {kind.__name__}, not {value!r}")
    try:
        return cls(**values)
    except ValueError as e:  # a size out of range (model/sizes.py), or sizes that do not fit together
        raise ValueError(f"{where}: {e}") from None


def fits(kind, value):
    """Whether a value read from JSON suits a config field of type `kind` (None suits any)."""
    if value is None or kind not in (int, float, bool, str):
        return True
    if kind is bool or isinstance(value, bool):
        return kind is bool and isinstance(value, bool)  # True is an int to Python, not to a config
    return isinstance(value, (int, float) if kind is float else kind)
