"""A hand-out without answers: `python -m exercises pack DIR` writes a student pack to DIR.

The pack holds the stubs, the checker and every case as data (exercises/packdata.py): the arguments, the
expected output and the output of each catalogued mistake, and for every exercise with a place in the
model a recording of each call the small captioner makes to its hook points. It holds no model/ and no
reference implementation, yet checks with the same verdicts and diagnoses as the full project. Its
block cases give the student a block built from torch's own layers (exercises/standin.py).

    python -m exercises pack handout/       (in the project; refuses to write over an existing pack)
    cd handout && python -m exercises check all
"""

import shutil
from pathlib import Path

import torch

from exercises.checker import STUBS
from exercises.packdata import RAISED, Recording, Store, replay, save
from exercises.parts import PATHS
from exercises.standin import StandInCache

HERE = Path(__file__).resolve().parent
PACKED = ["__init__.py", "__main__.py", "checker.py", "findings.py", "isolate.py", "parts.py", "standin.py",
          "packdata.py"]  # the modules a pack needs: none of them imports model/


# ---------------------------------------------------------------------------------------------- the captioner, recorded


class BlockAt:
    """A decoder block as a call saw it: the module and whether it was training (it changes later)."""

    def __init__(self, block):
        self.block, self.training = block, block.training


def snapshot(x):
    """A call's argument as it was when the call began (a cache grows afterwards)."""
    from model.attention import AttentionCache
    from model.decoder import DecoderBlock

    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, AttentionCache):
        return StandInCache(x.static, *(None if t is None else t.detach().clone() for t in (x.k, x.v)))
    if isinstance(x, DecoderBlock):
        return BlockAt(x)
    if isinstance(x, (tuple, list)):
        return type(x)(snapshot(v) for v in x)
    return x


def recorded_calls(hooks):
    """Every call the small captioner makes to `hooks` on its paths (exercises/captioner_case.py), with
    the project's own functions answering -> [{"path", "hook", "args", "rng", "grad", "result"}]."""
    from exercises.captioner_case import run_paths
    from exercises.model_exercises import REFERENCE, reference_patches

    own, calls, out = {**REFERENCE, "patch_embedding": reference_patches}, [], {}

    def recorder(hook):
        def call(*args):
            entry = {"path": next(name for name in PATHS if name not in out), "hook": hook, "args": snapshot(args),
                     "rng": None, "grad": None}
            training = entry["path"] == "training_loss" and torch.is_grad_enabled()
            if training and hook == "decoder_block":
                entry["rng"] = torch.get_rng_state()  # the dropout's random state
            result = own[hook](*args)
            entry["result"] = snapshot(result)  # what the model's own parts gave (tests compare the stand-ins)
            outputs = [t for t in flat(result) if t.requires_grad]
            if training and outputs:
                entry["grad"] = [torch.zeros_like(t) for t in outputs]
                for i, t in enumerate(outputs):
                    t.register_hook(lambda g, i=i: entry["grad"].__setitem__(i, g.detach().clone()))
            calls.append(entry)
            return result

        return call

    run_paths({hook: recorder(hook) for hook in hooks}, out)
    for entry in calls:
        entry["grad"] = None if entry["grad"] is None else tuple(entry["grad"])
    return calls


def flat(x):
    if isinstance(x, torch.Tensor):
        return [x]
    return [t for v in x for t in flat(v)] if isinstance(x, (tuple, list)) else []


# ---------------------------------------------------------------------------------------------- writing values


def module(x, store):
    """Store.put's `other`: a decoder block, as its parts' tensors (the attention cut per head)."""
    from model.decoder import DecoderBlock

    at = x if isinstance(x, BlockAt) else BlockAt(x) if isinstance(x, DecoderBlock) else None
    if at is None:
        raise TypeError(f"a pack cannot hold a {type(x).__name__}")
    index = getattr(store, "index", {})
    store.index = index
    key = (id(at.block), at.training)
    if key not in index:
        index[key] = len(store.blocks)
        store.blocks.append(block_data(at.block, at.training, store))
    return {"block": index[key]}


def block_data(block, training, store):
    """-> [settings, part name -> tensor name], as StandInBlock.from_parameters reads them."""
    gelu = getattr(block.mlp.gelu, "approximate", None)
    if gelu not in ("none", "tanh"):
        raise TypeError(f"a pack's block stand-in has an exact or tanh GELU, not {type(block.mlp.gelu).__name__}")
    width = block.ln_1.normalized_shape[0]
    settings = {"width": width, "hidden": block.mlp.c_fc.out_features, "gelu": "tanh" if gelu == "tanh" else "exact",
                "dropout": block.dropout.p, "training": training, "cross": block.cross_attn is not None}
    names = {}
    parts = {f"{n}.{p}": getattr(getattr(block, n), p) for n in ("ln_1", "ln_2", "ln_3") if getattr(block, n) is not None
             for p in ("weight", "bias")}
    parts |= {f"mlp.{n}.{p}": getattr(getattr(block.mlp, n), p) for n in ("c_fc", "c_proj") for p in ("weight", "bias")}
    for n in ("self_attn", "cross_attn"):
        attn = getattr(block, n)
        if attn is None:
            continue
        H = attn.heads
        D = width // H
        parts[f"{n}.w"] = attn.in_proj_weight.view(3, H, D, width).transpose(-1, -2)  # (3, H, C, D)
        parts[f"{n}.b"] = attn.in_proj_bias.view(3, H, 1, D)
        parts[f"{n}.w_out"] = attn.out_proj.weight.T.reshape(H, D, width)  # (H, D, C)
        parts[f"{n}.b_out"] = attn.out_proj.bias
    for name, tensor in parts.items():
        names[name] = store.tensor(tensor)["tensor"]
    return [settings, names]


def outputs_of(function, case, args):
    try:
        return case.call(function, args)
    except Exception:  # noqa: BLE001 - a wrong implementation that does not apply to a case
        return RAISED


def case_data(ex, case, store):
    """One case (and every catalogued mistake's output on it) as JSON, computed on the arguments exactly as
    the pack will give them (a block as its stand-in)."""
    reference = dict(ex.functions) if case.function == "*" else ex.functions[case.function]
    data = {"name": case.name, "function": case.function, "returns": case.returns, "recording": None}
    if case.function == "*":  # the captioner case: its calls, recorded, replayed with the student's functions
        from exercises.plug import PLUGS

        calls = [{"path": c["path"], "hook": c["hook"], "args": store.put(c["args"], module),
                  "rng": None if c["rng"] is None else store.put(c["rng"]),
                  "grad": None if c["grad"] is None else store.put(c["grad"])} for c in recorded_calls(PLUGS[ex.name])]
        args = (Recording(calls, store),)
        data |= {"recording": calls, "run": replay().spec}
        data["expected"] = store.put(replay()(reference, args))
        return data, {}
    stored = store.put(case.args(), module)
    args = store.get(stored)
    data |= {"args": stored, "run": getattr(case.run, "spec", None),
             "expected": store.put(case.call(reference, args))}
    return data, args


def exercise_data(ex, store):
    names = [c.name for c in ex.cases]
    assert len(set(names)) == len(names), f"{ex.name}: two cases of the same name"
    cases, mistakes = [], [{"diagnosis": m.diagnosis, "function": m.function,
                            "seen": getattr(m.seen, "spec", None) if m.seen else None,
                            "raised": m.raised.__name__ if m.raised else None,
                            "outputs": {} if m.wrong else None} for m in ex.mistakes]
    for m in ex.mistakes:
        if m.seen is not None and not hasattr(m.seen, "spec"):
            raise TypeError(f"{ex.name}: a mistake's test of what came back is not a part (exercises/parts.py)")
    for case in ex.cases:
        data, args = case_data(ex, case, store)
        cases.append(data)
        for m, md in zip(ex.mistakes, mistakes):
            if m.wrong is not None and m.function in (None, case.function):
                got = outputs_of(m.wrong, case, args)
                md["outputs"][case.name] = got if got == RAISED else store.put(got)
    if any(c.run is not None and not hasattr(c.run, "spec") and c.function != "*" for c in ex.cases):
        raise TypeError(f"{ex.name}: a case's caller is not a part (exercises/parts.py)")
    return {"name": ex.name, "title": ex.title, "functions": list(ex.functions), "plugs_into": ex.plugs_into,
            "cases": cases, "mistakes": mistakes}


# ---------------------------------------------------------------------------------------------- the pack


def write_pack(folder):
    """Write a student pack to `folder` (which must not hold one yet) -> the pack's exercises/ folder."""
    from exercises import EXERCISES, PACKED as packed_here

    if packed_here.is_dir():
        raise SystemExit("error: this is a student pack already; write packs from the full project")
    target = Path(folder) / "exercises"
    if target.exists():
        raise SystemExit(f"error: {target} exists; a pack is written to a new folder, never over one")
    target.mkdir(parents=True)
    for name in PACKED:
        shutil.copy(HERE / name, target / name)
    shutil.copytree(STUBS, target / "stubs")
    store = Store()
    torch_state = torch.get_rng_state()
    data = {"exercises": [exercise_data(ex, store) for ex in EXERCISES.values()], "blocks": store.blocks}
    torch.set_rng_state(torch_state)
    save(target / "cases", data, store)
    (Path(folder) / "README.md").write_text(README)
    return target


README = """# Exercises: a student pack

Write each function yourself in `my_exercises/` and check it:

    python -m exercises start            # copies the stubs to my_exercises/ (never over your work)
    python -m exercises check attention  # one exercise
    python -m exercises check all        # every exercise, as your instructor grades them

Needs Python 3.10+ with `torch` and `safetensors`. The checker compares your functions' results with
stored ones (exercises/cases/): the project's answers are not in this folder. A function with a place in
the captioner is also checked on every call the captioner makes to it, on every path it runs (training,
cached decoding, beam search, sampling).
"""
