"""The checker: run a student's function against the project's own on seeded cases, and answer in plain words.

An Exercise lists its functions with their references (the code in model/), its cases and the mistakes
students commonly make. A mistake is either a wrong implementation (if the student's output equals its
output on the failing case, that is the diagnosis) or a test of what came back (a float mask, a float
beam index, an output of the wrong shape). The first mistake that explains the failing case is named.
"""

import copy
import importlib.util
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import torch

from exercises.findings import structural

STUBS = Path(__file__).resolve().parent / "stubs"  # the files handed out, one per exercise


@dataclass
class Case:
    """One call of one of the exercise's functions: `args()` builds its (seeded) arguments afresh."""

    name: str  # what the case is, in words, e.g. "causal mask, 2 images x 3 heads, 5 tokens"
    function: str  # which of the exercise's functions it calls; "*": all of them (run gets name -> function)
    args: callable
    returns: object = "result"  # what the result is called in messages; a tuple of names for a tuple
    run: callable = None  # how to call the function: run(function, args) -> result; default function(*args)
    expected: object = None  # the expected result, when it is stored (a student pack); else the reference's

    def call(self, function, args):
        """Call with copies of the arguments, so a function that changes its inputs in place cannot spoil
        the reference's or the next case's."""
        args = copy.deepcopy(args)
        return function(*args) if self.run is None else self.run(function, args)


@dataclass
class Mistake:
    """A common wrong answer and what to say about it."""

    diagnosis: str  # the likely mistake and how to fix it, in a sentence or two
    wrong: callable = None  # a wrong implementation: the diagnosis if the student's output equals its output
    seen: callable = None  # or a test seen(args, got, expected, student) -> bool of what came back
    raised: type = None  # or an exception type the student's function raised on the case
    function: str = None  # the function it is about (None: any of the exercise's functions)
    outputs: dict = None  # or the wrong implementation's outputs, stored: case name -> output (a student pack)


@dataclass
class Exercise:
    name: str  # what `python -m exercises check NAME` takes
    title: str
    functions: dict  # function name -> reference implementation (the project's own code)
    cases: list
    mistakes: list = field(default_factory=list)
    plugs_into: str = ""  # where `--student-code NAME` puts the student's code, in words ("" : nowhere)

    @property
    def file(self):
        return f"{self.name}.py"


@dataclass
class Report:
    exercise: Exercise
    passed: int  # cases passed before the first failure (all of them if it passed)
    message: str = ""  # empty when every case passed
    not_implemented: bool = False
    outputs: list = field(default_factory=list)  # what the student's code returned, case by case
    note: str = ""  # said after the verdict, whatever it is (e.g. how much the code printed)

    @property
    def ok(self):
        return not self.message


def difference(got, expected, name="result"):
    """None if `got` equals `expected` (tensors within float tolerance, in the same structure), else the
    first difference in words. name: what the result is called, or a tuple of names for a tuple result
    (nested for nested tuples), e.g. ("out", "weights")."""
    if isinstance(expected, (tuple, list)):
        names = name if isinstance(name, tuple) else tuple(f"{name}[{i}]" for i in range(len(expected)))
        if not isinstance(got, (tuple, list)) or len(got) != len(expected):
            return f"expected a tuple ({', '.join(n if isinstance(n, str) else 'a tuple' for n in names)}), " \
                   f"got {describe(got)}"
        for g, e, n in zip(got, expected, names):
            problem = difference(g, e, n)
            if problem:
                return problem
        return None
    where = name
    if expected is None:
        return None if got is None else f"{where}: expected None, got {describe(got)}"
    if not isinstance(got, torch.Tensor):
        return f"{where}: expected a tensor of shape {tuple(expected.shape)}, got {describe(got)}"
    if got.shape != expected.shape:
        return f"{where}: expected shape {tuple(expected.shape)}, got {tuple(got.shape)}"
    if (got.dtype == torch.bool) != (expected.dtype == torch.bool) or got.is_complex() != expected.is_complex() \
            or got.is_floating_point() != expected.is_floating_point():
        return f"{where}: expected a {expected.dtype} tensor, got {got.dtype}"
    if expected.dtype == torch.bool or not expected.is_floating_point():
        wrong = got != expected
    else:
        g, e = got.double(), expected.double()
        wrong = ~torch.isclose(g, e, rtol=1e-4, atol=1e-5, equal_nan=True)  # -inf equals -inf too
    if not wrong.any():
        return None
    first = tuple(wrong.nonzero()[0].tolist())
    index = ", ".join(map(str, first))
    return (f"{where}[{index}]: expected {value(expected[first])}, got {value(got[first])} "
            f"({int(wrong.sum())} of {wrong.numel()} values differ)")


def value(x):
    x = x.item()
    return f"{x:.4g}" if isinstance(x, float) else str(x)


def describe(x):
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    if isinstance(x, (tuple, list)):
        return f"a {type(x).__name__} of {len(x)}"
    return repr(x) if x is None else f"a {type(x).__name__}"


def diagnose(exercise, case, args, student, got=None, expected=None, error=None):
    for mistake in exercise.mistakes:
        if mistake.function not in (None, case.function):
            continue
        if error is not None:
            if mistake.raised is not None and isinstance(error, mistake.raised):
                return mistake.diagnosis
            continue
        if mistake.seen is not None and mistake.seen(args, got, expected, student):
            return mistake.diagnosis
        if mistake.outputs is not None and case.name in mistake.outputs:
            if not isinstance(mistake.outputs[case.name], str) and difference(got, mistake.outputs[case.name]) is None:
                return mistake.diagnosis  # (a str: the wrong implementation raised on this case)
        elif mistake.wrong is not None:
            try:
                if difference(got, case.call(mistake.wrong, args)) is None:
                    return mistake.diagnosis
            except Exception:  # noqa: BLE001 - a wrong implementation may not apply to this case
                pass
    return None


def expected_output(exercise, case, args):
    """What the case should give: stored (a student pack), or the project's own functions' result."""
    if case.expected is not None:
        return case.expected
    return case.call(exercise.functions if case.function == "*" else exercise.functions[case.function], args)


def check(exercise, functions, where=None):
    """Run every case of `exercise` with the student's `functions` (name -> callable) -> Report.
    `where` names the student's file in the messages."""
    where = where or "your code"
    outputs = []
    for number, case in enumerate(exercise.cases, 1):
        args = case.args()
        header = f"case {number} of {len(exercise.cases)} ({case.name})"
        needed = list(exercise.functions) if case.function == "*" else [case.function]
        missing = [name for name in needed if not callable(functions.get(name))]
        if missing:
            return Report(exercise, number - 1, f"{where} has no function {missing[0]}()", outputs=outputs)
        student = functions if case.function == "*" else functions[case.function]
        expected = expected_output(exercise, case, args)
        called = "your code" if case.function == "*" else f"{case.function}()"
        try:
            got = case.call(student, args)
        except NotImplementedError:
            return Report(exercise, number - 1, f"{needed[0]}() is not implemented yet: open {where}, read "
                          "its docstring and hints, and replace the `raise NotImplementedError`", True, outputs)
        except (Exception, SystemExit) as error:  # noqa: BLE001 - any error of the student's code is reported, not raised
            line = next((f"{Path(f.filename).name} line {f.lineno}" for f in
                         reversed(traceback.extract_tb(error.__traceback__)) if Path(f.filename).name ==
                         Path(str(where)).name), "")
            message = f"{called} raised {type(error).__name__} on {header}" + (f", at {line}" if line else "")
            message += f": {str(error).splitlines()[0] if str(error) else ''}"
            hint = diagnose(exercise, case, args, student, error=error)
            return Report(exercise, number - 1, message + (f"\n  Likely mistake: {hint}" if hint else ""), outputs=outputs)
        outputs.append(got)
        problem = difference(got, expected, case.returns)
        if problem:
            hint = diagnose(exercise, case, args, student, got, expected)
            finding = None if hint else structural(got, expected, args, case.returns)
            message = f"{called} gave a wrong answer on {header}:\n  {problem}"
            message += f"\n  Likely mistake: {hint}" if hint else f"\n  What differs: {finding}" if finding else ""
            return Report(exercise, number - 1, message, outputs=outputs)
    return Report(exercise, len(exercise.cases), outputs=outputs)


def load(path):
    """The functions defined in the student's file `path` -> (name -> callable), or raise SystemExit with
    one line naming the file and line (a syntax error, an import that fails)."""
    path = Path(path)
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist")
    module_name = f"student_{path.parent.name}_{path.stem}".replace("-", "_")
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise SystemExit(f"error: {path} line {e.lineno}: {e.msg}") from None
    except SystemExit as e:
        raise SystemExit(f"error: {path} ended the checker before it finished (it called sys.exit({e.code!r}) as it was "
                         "imported): a file of exercises only defines functions") from None
    except Exception as e:  # noqa: BLE001 - the student's module failed as it was imported
        raise SystemExit(f"error: {path} could not be imported: {type(e).__name__}: {e}") from None
    sys.modules[module_name] = module
    return {name: getattr(module, name) for name in dir(module) if callable(getattr(module, name))}
