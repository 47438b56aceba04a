"""Checking a student's file in a process of its own, so that nothing in it can stop, hang or fool the checker.

The parent process never imports the student's file. For each exercise it starts

    python -m exercises.isolate NAME FILE RESULT

which loads the file, refuses it if it hands in or calls the project's own answer, runs the checker, and
writes the report and the student's outputs to RESULT. The parent then stops a child that runs past the
time limit, reads what the student's code printed only to say how much there was, and checks every
output the child calls right against the project's own answer itself: a file that changes the checker
or its references inside the child gains nothing. A file that exits, hangs, crashes or cannot be read
gets a FAILED line of its own; the other exercises are still checked.
"""

import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent  # the project, so the child can import exercises and model
TIME_LIMIT = 60  # seconds of CPU time one exercise may take
WALL_FACTOR = 3  # and at most this many times as long on the clock (a file that sleeps instead of computing)
FILE_LIMIT = 64 * 2**20  # bytes the child may write to one file (what it prints included)
ONE_AT_A_TIME = threading.Lock()  # verify() seeds torch and plugs into the model: both are global


def limits(time_limit):
    """What the child may use: FILE_LIMIT bytes per file, and time_limit seconds of CPU time. CPU time, not
    wall time, stops an endless loop: a busy machine slows a correct check down without making it use more."""
    def apply():
        resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))
        seconds = max(1, int(time_limit))
        resource.setrlimit(resource.RLIMIT_CPU, (seconds, seconds + 1))
    return apply


def check_isolated(name, folder, time_limit=TIME_LIMIT):
    """Check folder/NAME.py in a child process -> Report (never raises for anything the file does)."""
    from exercises import exercise
    from exercises.checker import Report

    ex = exercise(name)
    path = Path(folder) / ex.file
    if not path.is_file():
        return Report(ex, 0, f"{path} does not exist: `python -m exercises start --dir {folder}` copies the stub")
    with tempfile.TemporaryDirectory() as tmp:
        result, printed = Path(tmp) / "result.pt", Path(tmp) / "printed.txt"
        command = [sys.executable, "-m", "exercises.isolate", name, str(path.resolve()), str(result)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
                   OMP_NUM_THREADS="1")  # one thread: its CPU time is its work, not threads waiting for each other
        with open(printed, "wb") as out:
            try:
                done = subprocess.run(command, cwd=tmp, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                      env=env, timeout=WALL_FACTOR * time_limit, preexec_fn=limits(time_limit))
            except subprocess.TimeoutExpired:  # waiting, not computing: sleep() in a loop, or a blocked read
                done = None
        if done is None or done.returncode == -signal.SIGXCPU:
            return Report(ex, 0, f"{path} was stopped after {time_limit:g} s: an endless loop, or far too much work?")
        size = printed.stat().st_size
        if not result.exists():
            last = last_line(printed)
            return Report(ex, 0, f"{path} ended the checker before it finished (exit status {done.returncode}): "
                          f"sys.exit(), os._exit() or a crash in your file?" + (f" It printed last: {last}" if last else ""))
        try:
            data = torch.load(result, weights_only=True)
        except Exception as e:  # noqa: BLE001 - whatever the child wrote, the answer is one line
            return Report(ex, 0, f"{path}: the checker could not read back what your code returned ({type(e).__name__})")
    report = Report(ex, data["passed"], data["message"], data["not_implemented"], data["outputs"])
    with ONE_AT_A_TIME:
        tampered = verify(ex, report)
    if tampered:
        return Report(ex, 0, f"{path}: {tampered}")
    if size > 2**20:
        report.note = f"(your code printed {size / 2**20:.1f} MB while it was checked; none of it is shown)"
    return report


def check_all_isolated(names, folder, time_limit=TIME_LIMIT, workers=2):
    """check_isolated for each name, two at a time -> name -> Report, in the order given."""
    with ThreadPoolExecutor(workers) as pool:
        reports = list(pool.map(lambda n: check_isolated(n, folder, time_limit), names))
    return dict(zip(names, reports))


def verify(ex, report):
    """None if every output the child calls right equals the project's own answer, else what is wrong."""
    from exercises.checker import difference, expected_output

    if report.passed > len(ex.cases) or len(report.outputs) < report.passed or (report.ok and report.passed < len(ex.cases)):
        return "the checker's report was changed from inside the file: it does not fit the exercise's cases"
    for number, case in enumerate(ex.cases[: report.passed], 1):
        if difference(report.outputs[number - 1], expected_output(ex, case, case.args())) is not None:
            return (f"case {number} was reported right, but its output is not the expected one: the checker was "
                    "changed from inside the file")
    return None


def last_line(path, most=300):
    with open(path, "rb") as f:
        f.seek(max(0, path.stat().st_size - 4096))
        lines = f.read().decode(errors="replace").strip().splitlines()
    return lines[-1][:most] if lines else ""


# ---------------------------------------------------------------------------------------------- the child


def reference_codes():
    """The code of the project's own answers: a student's file may neither hand them in nor call them."""
    from exercises import PACKED

    if PACKED.is_dir():
        return {}  # a student pack holds none
    from exercises import EXERCISES
    from exercises.decoding_exercises import reference_cached_attention
    from exercises.model_exercises import REFERENCE, reference_patches
    from model.attention import AttentionCache

    functions = list(REFERENCE.values()) + [reference_cached_attention, reference_patches, AttentionCache.append]
    functions += [f for e in EXERCISES.values() for f in e.functions.values()]
    return {f.__code__: f"{f.__module__}.{f.__qualname__}" for f in functions}


def handed_in(functions, codes):
    """The first of the student's functions that is one of the project's own, or None."""
    for name, function in functions.items():
        if getattr(function, "__code__", None) in codes:
            return name, codes[function.__code__]
    return None


def trace_reference_calls(path, codes, seen):
    """A profile function recording calls of the project's answers whose nearest caller outside torch is
    the student's file (a call through block.self_attn, say, has the project's MultiHeadAttention between)."""
    student, torch_dir = str(Path(path).resolve()), str(Path(torch.__file__).parent)

    def profile(frame, event, arg):
        if event == "call" and frame.f_code in codes:
            caller = frame.f_back
            while caller is not None and caller.f_code.co_filename.startswith(torch_dir):
                caller = caller.f_back
            if caller is not None and str(Path(caller.f_code.co_filename).resolve()) == student:
                seen.append(codes[frame.f_code])
    return profile


def child(name, path, result):
    from exercises import EXERCISES
    from exercises.checker import Report, check, load

    ex, codes = EXERCISES[name], reference_codes()  # taken before the student's file can change anything
    refused = "{file} {does} the project's own answer ({answer}) instead of writing it: write {name}() yourself"
    try:
        functions = load(path)
    except SystemExit as e:
        report = Report(ex, 0, str(e).removeprefix("error: "))
    else:
        given = handed_in({f: functions[f] for f in ex.functions if f in functions}, codes)
        if given:
            report = Report(ex, 0, refused.format(file=path, does="hands in", answer=given[1], name=given[0]))
        else:
            seen = []
            sys.setprofile(trace_reference_calls(path, codes, seen))
            try:
                report = check(ex, functions, where=path)
            finally:
                sys.setprofile(None)
            if seen:
                report = Report(ex, 0, refused.format(file=path, does="calls", answer=seen[0], name=name))
    outputs = [to_plain(o) for o in report.outputs]
    torch.save({"passed": report.passed, "message": report.message, "not_implemented": report.not_implemented,
                "outputs": outputs}, result)


def to_plain(x):
    """An output as tensors, tuples and None only (what torch.load(weights_only=True) reads back)."""
    if isinstance(x, torch.Tensor):
        return x.detach().clone()
    if isinstance(x, (tuple, list)):
        return tuple(to_plain(v) for v in x)
    return x if x is None or isinstance(x, (int, float, bool, str)) else repr(x)


if __name__ == "__main__":
    child(*sys.argv[1:4])
