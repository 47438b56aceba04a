"""The sizes a model configuration may ask for: well above any released model of its kind, well below what
would exhaust a machine before a single weight is read. A config file is checked against these, then
against the shapes its weights file holds (model/checkpoint.py), before any memory is allocated."""

import math


def check_sizes(config, limits, rules=lambda: ()):
    """Raise ValueError, one sentence, for the first field of `config` outside its (low, high) in `limits`,
    then for the first (broken, message) that rules() gives (called once every size is a number)."""
    for name, (low, high) in limits.items():
        value = getattr(config, name)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and low <= value <= high):
            raise ValueError(f"{name} must be a number from {low} to {high}, not {value!r}")
    for broken, message in rules():
        if broken:
            raise ValueError(message)
