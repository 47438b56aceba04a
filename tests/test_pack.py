"""The student pack (python -m exercises pack DIR): no answers in it, and the same verdicts as the project."""

import os
import re
import subprocess
import sys

import pytest
import torch

from exercises import EXERCISES
from exercises.__main__ import main as exercises_main
from exercises.checker import check
from exercises.pack import PACKED, module, recorded_calls
from exercises.packdata import Store, load_exercises, replay_call
from exercises.plug import PLUGS
from tests.exercise_mistakes import MISTAKES
from tests.test_exercises import SOLUTIONS, solution, write_solutions


pytestmark = pytest.mark.xdist_group("pack")  # one worker builds the pack once for all of them


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("handout")
    assert exercises_main(["pack", str(folder)]) == 0
    return folder


def likely(report):
    return report.ok, report.passed, re.findall(r"Likely mistake: (.*)", report.message)


def test_a_pack_holds_the_stubs_the_checker_and_data_but_no_answer(pack):
    assert sorted(p.name for p in pack.iterdir()) == ["README.md", "exercises"]
    code = sorted(p.name for p in (pack / "exercises").glob("*.py"))
    assert code == sorted(PACKED)
    functions = {f for ex in EXERCISES.values() for f in ex.functions}
    for file in (pack / "exercises").glob("*.py"):  # no module of the pack defines an exercise's function
        defined = set(re.findall(r"^\s*def (\w+)\(", file.read_text(), re.M))
        assert not defined & functions, (file.name, defined & functions)
    assert sorted(p.name for p in (pack / "exercises" / "stubs").glob("*.py")) == sorted(SOLUTIONS)
    with pytest.raises(SystemExit, match="never over one"):
        exercises_main(["pack", str(pack)])


def test_a_pack_checks_alone_without_model(pack):
    """In the pack's own folder, with nothing of the project importable: the stubs as shipped are not
    implemented, the solutions pass, and a block without the cache gets the project's diagnosis."""
    students = write_solutions(pack / "solutions")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = lambda *a: subprocess.run([sys.executable, *a], cwd=pack, env=env, capture_output=True, text=True,  # noqa: E731
                                    timeout=300)
    assert "None" in run("-c", "import importlib.util as u; print(u.find_spec('model'))").stdout
    done = run("-m", "exercises", "check", "all", "--dir", "solutions")
    assert done.returncode == 0 and "9 of 9 exercises passed" in done.stdout, done.stdout + done.stderr
    done = run("-m", "exercises", "check", "attention", "--dir", "fresh")
    assert done.returncode == 1 and "not implemented yet" in done.stdout
    no_cache = next(source for name, source, words in MISTAKES if "cached steps" in words)
    (students / "block.py").write_text("import torch\n" + no_cache)
    done = run("-m", "exercises", "check", "block", "--dir", "solutions")
    assert done.returncode == 1 and "Likely mistake: your code is right on a first call but not on the cached" \
        in done.stdout, done.stdout + done.stderr


def test_the_pack_gives_the_projects_verdicts_on_the_whole_catalogue(pack):
    """Every wrong function of the tests' catalogue and every mistake an exercise lists: the pack and the
    project agree on passed or failed, on how many cases passed and on the diagnosis."""
    packed = load_exercises(pack / "exercises" / "cases")
    tried = 0
    for name, source, _ in MISTAKES:
        namespace = {}
        exec("import math\nimport torch\n" + source, namespace)  # noqa: S102 - the test's own source
        functions = solution(name) | {f: namespace[f] for f in EXERCISES[name].functions if f in namespace}
        assert likely(check(EXERCISES[name], functions)) == likely(check(packed[name], functions)), source
        tried += 1
    for name, ex in EXERCISES.items():
        assert likely(check(packed[name], solution(name)))[0]
        for mistake in ex.mistakes:
            for function in [mistake.function] if mistake.function in ex.functions else [] if mistake.wrong is None else ex.functions:
                if mistake.wrong is not None:
                    functions = solution(name) | {function: mistake.wrong}
                    full = likely(check(ex, functions))
                    assert not full[0] and full == likely(check(packed[name], functions)), mistake.diagnosis
                    tried += 1
    assert tried >= 60


@pytest.mark.parametrize("exercise", ["block", "attention"])
def test_the_packs_stand_in_block_gives_the_models_results(exercise):
    """The recorded calls replayed on the pack's stand-ins (a block from torch's layers) give what the
    model's own modules gave in the captioner, on every path (training with dropout, cached steps, beams)."""
    store, calls = Store(), recorded_calls(PLUGS[exercise])
    reference = EXERCISES[exercise].functions[PLUGS[exercise][0]]
    paths = set()
    for call in calls:
        stored = {"args": store.put(call["args"], module), "rng": None if call["rng"] is None else store.put(call["rng"]),
                  "grad": None if call["grad"] is None else store.put(call["grad"])}
        got, _ = replay_call(reference, stored, store)
        expected = call["result"]
        for g, e in zip(got if isinstance(got, tuple) else (got,), expected if isinstance(expected, tuple) else (expected,)):
            assert (g is None and e is None) or torch.allclose(g, e, atol=1e-5), call["path"]
        paths.add(call["path"])
    assert paths == {"training_loss", "first_call", "cached_two", "cached_one", "self_attention", "greedy", "beam",
                     "sampled"}  # (one call of the model draws both kinds of attention weights: self_attention)
