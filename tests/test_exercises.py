"""The exercises: the stubs say "not implemented yet", a student's correct code (written from the hints alone)
passes, every listed mistake gets its diagnosis, and the captioner trains with the student's code."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import exercises
import generate
import train
from exercises import EXERCISES, PLUGS, check, check_folder
from exercises.__main__ import main as exercises_main
from exercises.checker import STUBS
from tests.exercise_mistakes import MISTAKES
from tests.test_distributed import assert_same_weights
from tests.test_train import TINY

ROOT = Path(__file__).resolve().parent.parent

# What a student writes into each stub as handed out: only the bodies, each in place of the stub's
# `raise NotImplementedError`, signatures and docstrings untouched. Every function counts its calls, so a
# test can see that the captioner really ran it.
BODIES = {
    "attention.py": {"attention": """
    CALLS.append("attention")
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    return weights @ v, weights"""},
    "masks.py": {"causal_mask": """
    CALLS.append("causal_mask")
    S = T if S is None else S
    return torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]""", "padding_mask": """
    CALLS.append("padding_mask")
    return (torch.arange(S, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]"""},
    "heads.py": {"split_heads": """
    CALLS.append("split_heads")
    B, T, C = x.shape
    return x.view(B, T, heads, C // heads).transpose(1, 2)""", "merge_heads": """
    CALLS.append("merge_heads")
    B, H, T, D = x.shape
    return x.transpose(1, 2).reshape(B, T, H * D)"""},
    "patches.py": {"patch_embedding": """
    CALLS.append("patch_embedding")
    B, _, S, _ = images.shape
    p, g = patch_size, S // patch_size
    x = images.view(B, 3, g, p, g, p).permute(0, 2, 4, 1, 3, 5).reshape(B, g * g, 3 * p * p)
    return x @ weight.flatten(1).T"""},
    "block.py": {"decoder_block": """
    CALLS.append("decoder_block")
    self_cache, cross_cache = cache if cache is not None else (None, None)
    a, self_w = block.self_attn(block.ln_1(x), mask=mask, cache=self_cache, return_attn=return_attn)
    x = x + block.dropout(a)
    a, cross_w = block.cross_attn(block.ln_2(x), memory, memory_mask, cross_cache, return_attn)
    x = x + block.dropout(a)
    x = x + block.dropout(block.mlp(block.ln_3(x)))
    return x, self_w, cross_w"""},
    "prefix.py": {"prefix_lm_mask": """
    CALLS.append("prefix_lm_mask")
    mask = torch.ones(P + T, P + T, dtype=torch.bool).tril()
    mask[:, :P] = True
    return mask"""},
    "cache.py": {"cached_attention": """
    CALLS.append("cached_attention")
    if past is not None:
        k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)
    T, S = q.size(2), k.size(2)
    mask = torch.arange(S)[None, :] <= torch.arange(S - T, S)[:, None]
    scores = (q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))).masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v, (k, v)"""},
    "filters.py": {"top_k_filter": """
    CALLS.append("top_k_filter")
    kth = logits.topk(min(k, logits.size(-1)), dim=-1).values[:, -1:]
    return logits.masked_fill(logits < kth, float("-inf"))""", "top_p_filter": """
    CALLS.append("top_p_filter")
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    keep = probs.cumsum(-1) - probs < p
    keep = torch.zeros_like(keep).scatter(-1, order, keep)
    return logits.masked_fill(~keep, float("-inf"))"""},
    "beam.py": {"best_beams": """
    CALLS.append("best_beams")
    B, K_in, V = scores.shape
    best = scores.reshape(B, K_in * V).topk(K, dim=-1).indices
    return best // V, best % V"""},
}
STUB_BODY = '    raise NotImplementedError("not implemented yet")'


def filled(file, bodies=None):
    """The stub `file` exactly as shipped, with each function's `raise NotImplementedError` replaced by the
    body a student wrote (BODIES by default)."""
    source = (STUBS / file).read_text()
    for function, body in (bodies or BODIES[file]).items():
        head = source.index(f"def {function}(")
        at = source.index(STUB_BODY, head)
        source = source[:at] + body.strip("\n") + source[at + len(STUB_BODY):]
    return source + "\n\nCALLS = []\n"


SOLUTIONS = {file: filled(file) for file in BODIES}


def write_solutions(folder):
    folder.mkdir(parents=True, exist_ok=True)
    for name, source in SOLUTIONS.items():
        (folder / name).write_text(source)
    return folder


def solution(name):
    """The functions of one solution file, loaded as the checker loads a student's file."""
    namespace = {}
    exec(SOLUTIONS[f"{name}.py"], namespace)  # noqa: S102 - the test's own source
    return {f: namespace[f] for f in EXERCISES[name].functions}


def test_there_is_one_stub_and_one_solution_per_exercise_in_course_order():
    assert list(EXERCISES) == ["attention", "masks", "heads", "patches", "block", "prefix", "cache", "filters", "beam"]
    assert sorted(p.name for p in STUBS.glob("*.py")) == sorted(SOLUTIONS) == sorted(e.file for e in EXERCISES.values())


@pytest.mark.parametrize("name", list(EXERCISES))
def test_every_stub_as_shipped_says_not_implemented_yet(name):
    report = check_folder(name, STUBS)
    assert report.not_implemented and not report.ok
    assert "is not implemented yet: open" in report.message and str(STUBS / f"{name}.py") in report.message


@pytest.mark.parametrize("name", list(EXERCISES))
def test_the_projects_own_code_and_a_students_from_the_hints_pass(name):
    assert check(name, **EXERCISES[name].functions, quiet=True).ok  # the reference is model/'s code
    report = check(name, **solution(name), quiet=True)
    assert report.ok, report.message
    assert report.passed == len(EXERCISES[name].cases) >= 2


@pytest.mark.parametrize("name, source, diagnosis", MISTAKES, ids=[f"{m[0]}: {m[2]}" for m in MISTAKES])
def test_each_common_mistake_gets_its_diagnosis(name, source, diagnosis):
    namespace = {}
    exec("import math\nimport torch\n" + source, namespace)  # noqa: S102 - the test's own source
    wrong = {f: namespace[f] for f in EXERCISES[name].functions if f in namespace}
    report = check(name, **(solution(name) | wrong), quiet=True)  # the exercise's other function is right
    assert not report.ok
    assert "Likely mistake: " in report.message and diagnosis in report.message, report.message


def test_the_diagnoses_are_all_exercised():
    """Every mistake an exercise lists is named by at least one wrong implementation above."""
    for name, ex in EXERCISES.items():
        for mistake in ex.mistakes:
            anywhere = mistake.function == "*"  # the captioner's mistakes are the same in every exercise
            assert any((n == name or anywhere) and d in mistake.diagnosis for n, _, d in MISTAKES), (name, mistake.diagnosis)


def test_a_student_goes_from_the_stub_to_passing(tmp_path, capsys):
    """The first ten minutes: check (the stubs are copied), read that it is not implemented, write it, pass."""
    folder = tmp_path / "my_exercises"
    assert exercises_main(["check", "attention", "--dir", str(folder)]) == 1
    out = capsys.readouterr().out
    assert f"copied 9 exercise stubs to {folder}/" in out and "not implemented yet" in out
    stub = (folder / "attention.py").read_text()
    assert "Hints:" in stub and STUB_BODY in stub
    (folder / "attention.py").write_text(filled("attention.py"))
    assert exercises_main(["check", "attention", "--dir", str(folder)]) == 0
    assert "passed all 6 cases" in capsys.readouterr().out
    assert exercises.start(folder) == []  # starting again never overwrites a student's work


def test_the_solutions_are_the_stubs_with_bodies_only():
    """The test's student changes no line of a stub outside the bodies: every signature is as handed out."""
    for file, source in SOLUTIONS.items():
        stub = (STUBS / file).read_text()
        defs = [line for line in stub.splitlines() if line.startswith(("def ", "import ", "from "))]
        assert defs and all(line in source.splitlines() for line in defs), file


# What students hand in that must not stop, hang or fool the grading: (file, source, words of its FAILED line)
HOSTILE = [
    ("attention.py", "from model.attention import attention\n", "hands in the project's own answer"),
    ("heads.py", "from model.attention import merge_heads, split_heads as theirs\n\ndef split_heads(x, heads):\n"
                 "    return theirs(x, heads)\n", "the project's own answer"),
    ("masks.py", "import sys\nsys.exit(0)\n", "ended the checker before it finished (it called sys.exit(0)"),
    ("cache.py", "import os\nos._exit(3)\n", "ended the checker before it finished (exit status 3)"),
    ("patches.py", "def patch_embedding(images, weight, patch_size):\n    while True:\n        pass\n",
     "was stopped after 10 s"),
    ("prefix.py", "def prefix_lm_mask(P, T)\n    return None\n", "prefix.py line 1: "),
    ("filters.py", "import exercises.checker as c\nc.difference = lambda *a, **k: None\n"
                   "def top_k_filter(logits, k):\n    return logits\ndef top_p_filter(logits, p):\n    return logits\n",
     "the checker was changed from inside the file"),
    ("beam.py", "import exercises.model_exercises as m\nimport torch\n"
                "def best_beams(scores, K):\n    return torch.zeros(scores.size(0), K, dtype=torch.long), "
                "torch.zeros(scores.size(0), K, dtype=torch.long)\n"
                "m.REFERENCE['best_beams'] = best_beams\n"
                "import exercises\nexercises.EXERCISES['beam'].functions['best_beams'] = best_beams\n",
     "the checker was changed from inside the file"),
]


def test_grading_survives_every_hostile_file(tmp_path):
    """Each file gets a FAILED line of its own, the others are still checked (block passes, cache is missing),
    the JSON is written, and the exit status is 1. The time limit is cut to 10 s for the endless loop."""
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "block.py").write_text(SOLUTIONS["block.py"])
    for file, source, _ in HOSTILE:
        (folder / file).write_text(source)
    grades = tmp_path / "grades.json"
    done = subprocess.run([sys.executable, "-m", "exercises", "check", "all", "--dir", str(folder), "--json", str(grades),
                           "--time-limit", "10"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 1, done.stdout + done.stderr
    result = json.loads(grades.read_text())
    assert result["block"]["passed"]
    for file, _, words in HOSTILE:
        name = file.removesuffix(".py")
        assert not result[name]["passed"] and words in result[name]["message"], (name, result[name]["message"])
    assert "1 of 9 exercises passed" in done.stdout


def test_megabytes_printed_and_odd_results_get_one_line(tmp_path):
    folder = tmp_path / "student"
    folder.mkdir()
    (folder / "attention.py").write_text(SOLUTIONS["attention.py"].replace('    CALLS.append("attention")\n',
                                                                           '    print("x" * 100_000)\n'))
    (folder / "masks.py").write_text(filled("masks.py", {"causal_mask": "    return torch.full((T, S or T), float('nan'))",
                                                         "padding_mask": "    return None"}))
    (folder / "beam.py").write_text(filled("beam.py", {"best_beams": "    return torch.zeros(2, K, dtype=torch.complex64), None"}))
    reports = exercises.check_all_isolated(["attention", "masks", "beam", "cache"], folder)
    assert "cache.py does not exist" in reports["cache"].message
    assert reports["attention"].ok and "MB while it was checked" in exercises.summary(reports["attention"])
    assert "expected a torch.bool tensor, got torch.float32" in reports["masks"].message
    assert "got torch.complex64" in reports["beam"].message or "expected shape" in reports["beam"].message


def student_calls(folder):
    """How often each student function ran in this process, counted by the loaded student files themselves
    (train.py and generate.py load each file as a module after its check passed in a process of its own)."""
    from collections import Counter

    return Counter(name for module in list(sys.modules.values()) if getattr(module, "__file__", None)
                   and Path(module.__file__).parent == folder for name in getattr(module, "CALLS", []))


def test_the_captioner_trains_and_captions_with_the_students_code(tmp_path, capsys):
    """--student-code all puts the student's attention, masks, heads, patches, block, prefix mask, filters and
    beam step into the model: the run ends with the weights of the normal run (the student's code computes
    the same function, in another order of float operations), and generate.py draws attention pictures."""
    folder = write_solutions(tmp_path / "student")
    run = TINY + ["--stop-after", "8", "--decoder-dropout", "0"]  # an epoch, without the captioning at the end
    train.main(run + ["--out", str(tmp_path / "ours")])
    train.main(run + ["--out", str(tmp_path / "theirs"), "--student-code", "all", "--student-dir", str(folder)])
    called = student_calls(folder)  # in this process: the checks before plugging in ran in processes of their own
    for name in ("attention", "padding_mask", "split_heads", "merge_heads", "patch_embedding", "decoder_block",
                 "prefix_lm_mask"):  # each at least once in each of the 8 training steps
        assert called[name] >= 8, (name, called[name])
    ours, theirs = (torch.load(tmp_path / run_name / "checkpoint.pt", weights_only=True)["model"]
                    for run_name in ("ours", "theirs"))
    assert_same_weights(ours, theirs)
    logs = [(tmp_path / n / "metrics.jsonl").read_text().splitlines()[-1] for n in ("ours", "theirs")]
    assert json.loads(logs[0])["val_exact"] == json.loads(logs[1])["val_exact"]  # the epoch's validation

    scene = tmp_path / "scene.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 40, 40)).save(scene)
    results = generate.main([str(tmp_path / "theirs" / "checkpoint.pt"), str(scene), "--beam", "2", "--attention",
                             str(tmp_path / "pictures"), "--student-code", "all", "--student-dir", str(folder)])
    assert (tmp_path / "pictures" / "scene.png").exists() and results[0]["captions"]
    assert student_calls(folder)["best_beams"] > 0  # beam search ran it
    from model.hooks import PLUGGED

    assert PLUGGED == {}  # the project's own code is back afterwards


def test_code_that_fails_its_check_is_not_plugged_in(tmp_path):
    folder = tmp_path / "work"
    exercises.start(folder)
    with pytest.raises(SystemExit, match="attention.py does not pass its check yet; run `python -m exercises check "
                                         "attention --dir"):
        train.main(TINY + ["--out", str(tmp_path / "x"), "--student-code", "attention", "--student-dir", str(folder)])
    with pytest.raises(SystemExit, match="cache: that exercise has no place in the model"):
        exercises.student_code("cache", folder)
    assert set(PLUGS) == set(EXERCISES) - {"cache"}
