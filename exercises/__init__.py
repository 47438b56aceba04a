"""Exercises: write the attention yourself, check it against the project's own code, train the captioner with it.

From a shell:      python -m exercises check attention       (copies the stubs to my_exercises/ the first time)
From a notebook:   from exercises import check; check("attention", my_attention)
Train with yours:  python train.py --student-code attention,block,filters
See exercises/README.md (for students and instructors).
"""

import shutil
from pathlib import Path

from exercises.checker import STUBS, Report, check as check_functions, load
from exercises.isolate import check_all_isolated, check_isolated

PACKED = Path(__file__).resolve().parent / "cases"  # a student pack's stored cases (python -m exercises pack)
if PACKED.is_dir():  # a pack: no model/, every expected output read from data (exercises/packdata.py)
    from exercises.packdata import load_exercises

    EXERCISES, PLUGS = load_exercises(PACKED), {}
else:  # the full project: the references are model/'s own code
    from exercises.catalogue import EXERCISES
    from exercises.plug import PLUGS
WORKSPACE = "my_exercises"  # where a student's copies of the stubs live (git ignores it)

__all__ = ["EXERCISES", "WORKSPACE", "Report", "check", "check_folder", "student_code", "plug_in",
           "use_student_code", "start", "PLUGS"]


def exercise(name):
    if name not in EXERCISES:
        raise SystemExit(f"error: no exercise {name!r}; the exercises are: {', '.join(EXERCISES)}")
    return EXERCISES[name]


def start(folder=WORKSPACE):
    """Copy the stubs into `folder` (those not there yet; a student's work is never overwritten) -> the names
    of the files copied."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    copied = []
    for stub in sorted(STUBS.glob("*.py")):
        if not (folder / stub.name).exists():
            shutil.copy(stub, folder / stub.name)
            copied.append(stub.name)
    return copied


def check(name, *functions, quiet=False, **named):
    """Check functions you wrote in a notebook: check("attention", attention), check("masks", causal_mask,
    padding_mask) (in the order the exercise lists them) or by name. Prints the answer; returns the Report."""
    ex = exercise(name)
    given = dict(zip(ex.functions, functions), **named)
    report = check_functions(ex, given)
    if not quiet:
        print(summary(report))
    return report


def check_folder(name, folder=WORKSPACE, quiet=True):
    """Check the student's file folder/NAME.py in a process of its own (exercises/isolate.py) -> Report
    (printed too unless quiet). Nothing the file does (exit, hang, crash, change the checker) stops it."""
    report = check_isolated(name, folder)
    if not quiet:
        print(summary(report))
    return report


def summary(report):
    ex = report.exercise
    number = list(EXERCISES).index(ex.name) + 1
    note = f"\n  {report.note}" if report.note else ""
    if report.ok:
        return f"{number}. {ex.name} ({ex.title}): passed all {report.passed} cases" + note
    return f"{number}. {ex.name} ({ex.title}): {'not implemented yet' if report.not_implemented else 'FAILED'}\n  " \
           + report.message + note


def student_code(names, folder=WORKSPACE):
    """The student's functions for plug_in: names is "attention,block" (or "all", every exercise that has a
    place in the model). Each must pass its check first; otherwise SystemExit with one line saying which. A file
    that passed unchanged against the same checker is not checked again (exercises/checked.py)."""
    wanted = list(PLUGS) if names.strip() == "all" else [n.strip() for n in names.split(",") if n.strip()]
    for name in wanted:
        if name not in PLUGS:
            raise SystemExit(f"error: --student-code {name}: that exercise has no place in the model; these "
                             f"do: {', '.join(PLUGS)} (or all)")
    from exercises.checked import RECORD, check_changed

    skipped, reports = check_changed(wanted, folder)
    if skipped:
        they = "it passed its" if len(skipped) == 1 else "they passed their"
        print(f"{', '.join(skipped)}: unchanged since {they} check, not checked again ({Path(folder) / RECORD})")
    for name, report in reports.items():
        if not report.ok:
            raise SystemExit(f"error: {Path(folder) / exercise(name).file} does not pass its check yet; run `python -m exercises check {name}"
                             f"{'' if str(folder) == WORKSPACE else ' --dir ' + str(folder)}` and fix it first")
    return {name: load(Path(folder) / exercise(name).file) for name in wanted}


def use_student_code(functions):
    """with use_student_code({"attention": {"attention": my_attention}}): ... trains or captions with them
    (exercises/plug.py)."""
    from exercises.plug import use_student_code as plugged_in

    return plugged_in(functions)


def plug_in(functions):
    """Plug the student's functions in until the returned function is called (exercises/plug.py)."""
    from exercises.plug import plug_in as plug

    return plug(functions)
