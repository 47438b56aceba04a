"""A student pack's cases as data: what exercises/pack.py writes and what a pack's checker reads back.

A pack holds no reference implementation. For every case it holds the arguments, the expected output and
the output of each catalogued mistake (cases/exercises.json, its tensors in cases/tensors.safetensors),
so the checker gives the same verdicts as the full project's without running the project's code. The
captioner case is a recording: every call the small captioner made to the exercise's hook points on each
of its paths (arguments, the gradient that reached the output in the training step, the random state
before a block's dropout), replayed with the student's functions.

Values are JSON with tensors by name: None, bool, int, str as themselves; {"float": "inf"} for a float;
{"tensor": name}; {"tuple": [...]}; {"block": index} (a decoder block: exercises/standin.py);
{"cache": {"static": bool, "k": ..., "v": ...}}. Nothing in a pack is unpickled.
"""

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from exercises.checker import Case, Exercise, Mistake
from exercises.parts import PATHS, failed_on, make, part
from exercises.standin import StandInBlock, StandInCache

RAISED = "raised"  # a mistake's stored output on a case where the wrong implementation raised


class Store:
    """Tensors and blocks kept by name while values are written as JSON (or read back from it)."""

    def __init__(self, tensors=None, blocks=None):
        self.tensors, self.blocks = tensors or {}, blocks or []

    def tensor(self, x):
        name = f"t{len(self.tensors)}"
        self.tensors[name] = x.detach().clone().contiguous()
        return {"tensor": name}

    def put(self, x, other=None):
        """x -> JSON. other(x, store) -> JSON for what is not a plain value (the full project's modules)."""
        if x is None or isinstance(x, (bool, int, str)):
            return x
        if isinstance(x, float):
            return {"float": repr(x)}
        if isinstance(x, torch.Tensor):
            return self.tensor(x)
        if isinstance(x, StandInCache):
            return {"cache": {"static": x.static, "k": self.put(x.k), "v": self.put(x.v)}}
        if isinstance(x, tuple):
            return {"tuple": [self.put(v, other) for v in x]}
        if isinstance(x, list):
            return [self.put(v, other) for v in x]
        if other is not None:
            return other(x, self)
        raise TypeError(f"a pack cannot hold a {type(x).__name__}")

    def get(self, j):
        """JSON -> the value, made afresh (a block or cache may be changed by the call it is given to)."""
        if j is None or isinstance(j, (bool, int, str)):
            return j
        if isinstance(j, list):
            return [self.get(v) for v in j]
        (kind, value), = j.items()
        if kind == "float":
            return float(value)
        if kind == "tensor":
            return self.tensors[value].clone()
        if kind == "tuple":
            return tuple(self.get(v) for v in value)
        if kind == "cache":
            return StandInCache(value["static"], self.get(value["k"]), self.get(value["v"]))
        if kind == "block":
            settings, names = self.blocks[value]
            return StandInBlock.from_parameters(settings, {n: self.tensors[t].clone() for n, t in names.items()})
        raise ValueError(f"a pack's value of unknown kind {kind!r}")


# ---------------------------------------------------------------------------------------------- the captioner, replayed


def float_tensors(args):
    """The arguments a gradient flows back to: float tensors, and a block's parameters."""
    found = []
    for a in args:
        if isinstance(a, torch.Tensor) and a.is_floating_point():
            found.append(a.requires_grad_())
        elif isinstance(a, torch.nn.Module):
            found.extend(a.parameters())
    return found


def flat_tensors(x):
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat_tensors(v)]
    return []


def gradients(out, grad, inputs):
    """The gradients the recorded `grad` (at the output) sends back to `inputs` through the call; zeros
    where none arrives (an output cut from its inputs sends none)."""
    pairs = [(o, g) for o, g in zip(flat_tensors(out), flat_tensors(grad)) if o.requires_grad]
    found = torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs], allow_unused=True) if pairs \
        else [None] * len(inputs)
    return tuple(torch.zeros_like(x) if g is None else g for x, g in zip(inputs, found))


def replay_call(function, call, store):
    """One recorded call, made again with `function` -> (output, gradients or None)."""
    args = store.get(call["args"])
    if call.get("rng") is not None:
        torch.set_rng_state(store.get(call["rng"]))  # the random state its dropout saw
    if call.get("grad") is None:
        with torch.no_grad():
            return function(*args), None
    inputs = float_tensors(args)
    out = function(*args)
    return detached(out), gradients(out, store.get(call["grad"]), inputs)


def detached(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    return tuple(detached(v) for v in x) if isinstance(x, (tuple, list)) else x


@part
def replay():
    """The captioner case of a pack: args = (the recorded calls,) -> for each path, every call's output
    (and, for the training step's gradients, what each call sends back)."""

    def run(functions, args):
        (recording,) = args
        calls, store = recording.calls, recording.store
        results = {path: [] for path in PATHS}
        for call in calls:
            path = call["path"]
            try:
                out, grads = replay_call(functions[call["hook"]], call, store)
            except Exception as error:  # noqa: BLE001 - said again with the path it happened on
                raise failed_on(path, error) from error
            results[path].append(out)
            if grads is not None:
                results["training_gradients"].append(grads)
        return tuple(tuple(results[path]) for path in PATHS)

    return run


class Recording:
    """The captioner case's argument: the calls and the store they are read from. Copied as itself (the
    checker copies a case's arguments; each replayed call makes its own values afresh)."""

    def __init__(self, calls, store):
        self.calls, self.store = calls, store

    def __deepcopy__(self, memo):
        return self


# ---------------------------------------------------------------------------------------------- reading a pack


def load_exercises(folder):
    """A pack's cases/ folder -> name -> Exercise, with every expected output stored."""
    folder = Path(folder)
    data = json.loads((folder / "exercises.json").read_text())
    store = Store(load_file(folder / "tensors.safetensors"), data["blocks"])
    exercises = {}
    for e in data["exercises"]:
        cases = [stored_case(c, store) for c in e["cases"]]
        mistakes = [Mistake(m["diagnosis"], seen=m["seen"] and make(m["seen"]), function=m["function"],
                            raised=raised(m["raised"]),
                            outputs=m["outputs"] and {k: v if v == RAISED else store.get(v) for k, v in m["outputs"].items()})
                    for m in e["mistakes"]]
        exercises[e["name"]] = Exercise(e["name"], e["title"], dict.fromkeys(e["functions"]), cases, mistakes,
                                        e["plugs_into"])
    return exercises


def stored_case(c, store):
    returns = as_tuples(c["returns"])
    if c["recording"] is not None:
        args = (Recording(c["recording"], store),)
        return Case(c["name"], c["function"], lambda: args, returns, make(c["run"]), expected=store.get(c["expected"]))
    return Case(c["name"], c["function"], lambda: store.get(c["args"]), returns, c["run"] and make(c["run"]),
                expected=store.get(c["expected"]))


def as_tuples(x):
    """JSON's lists back to the tuples they were (a case's `returns`: a name, or names nested in tuples)."""
    return tuple(as_tuples(v) for v in x) if isinstance(x, list) else x


def raised(name):
    """The exception type a mistake names: a built-in one, or one of exercises/parts.py's."""
    import builtins

    from exercises import parts

    return None if name is None else getattr(builtins, name, None) or getattr(parts, name)


def save(folder, data, store):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "exercises.json").write_text(json.dumps(data, indent=0))
    save_file(store.tensors, folder / "tensors.safetensors")
