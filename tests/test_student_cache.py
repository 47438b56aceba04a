"""Checked once (exercises/checked.py): --student-code skips the check of a file that passed it unchanged, checks
again after any change to the file or the checker, never remembers a failure, ignores a broken record, and
grading always checks."""

import json
import os

import pytest

import exercises
import exercises.checked
import exercises.isolate
from exercises import EXERCISES, student_code
from exercises.__main__ import main as exercises_main
from exercises.checked import RECORD, checker_hash, file_hash
from exercises.checker import STUBS, Report
from tests.test_exercises import SOLUTIONS

NAME = "prefix"  # the quickest exercise to check that has a place in the model (about 9 s on a 2-core CPU)


@pytest.fixture
def checks(monkeypatch):
    """The names each isolated check was started for, in order; the checks themselves still run."""
    started, real = [], exercises.isolate.check_isolated

    def counted(name, folder, *args):
        started.append(name)
        return real(name, folder, *args)

    monkeypatch.setattr(exercises.isolate, "check_isolated", counted)
    return started


@pytest.fixture
def passes(monkeypatch):
    """Stands in for the isolated check (each call a pass, counted) where only what is remembered matters."""
    started = []

    def passing(name, folder, *args):
        started.append(name)
        return Report(EXERCISES[name], len(EXERCISES[name].cases))

    monkeypatch.setattr(exercises.isolate, "check_isolated", passing)
    return started


def solved(tmp_path):
    folder = tmp_path / "my_exercises"
    folder.mkdir()
    (folder / f"{NAME}.py").write_text(SOLUTIONS[f"{NAME}.py"])
    return folder


def test_a_file_that_passed_is_not_checked_again(tmp_path, checks, capsys):
    folder = solved(tmp_path)
    first = student_code(NAME, folder)
    assert checks == [NAME] and "not checked again" not in capsys.readouterr().out
    again = student_code(NAME, folder)
    assert checks == [NAME]  # no second check
    said = capsys.readouterr().out
    assert said == f"{NAME}: unchanged since it passed its check, not checked again ({folder / RECORD})\n"
    assert set(again) == set(first) == {NAME} and again[NAME]["prefix_lm_mask"](2, 3).shape == (5, 5)
    record = json.loads((folder / RECORD).read_text())
    assert record == {NAME: {"file": file_hash(folder / f"{NAME}.py"), "checker": checker_hash()}}


def test_one_character_changed_in_the_file_or_the_checker_checks_again(tmp_path, passes, monkeypatch):
    folder = solved(tmp_path)
    student_code(NAME, folder)
    student_code(NAME, folder)
    assert passes == [NAME]
    path = folder / f"{NAME}.py"
    path.write_text(path.read_text().replace("CALLS = []", "CALLS = [ ]"))
    student_code(NAME, folder)
    student_code(NAME, folder)
    assert passes == [NAME, NAME]
    monkeypatch.setattr(exercises.checked, "checker_hash", lambda: "another checker")
    student_code(NAME, folder)
    assert passes == [NAME] * 3


def test_the_checkers_hash_covers_every_source_under_exercises_and_model(tmp_path, monkeypatch):
    for file in ("exercises/checker.py", "exercises/stubs/prefix.py", "model/attention.py"):
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text("x = 1\n")
    monkeypatch.setattr(exercises.checked, "ROOT", tmp_path)
    seen = {checker_hash()}
    for file in ("exercises/checker.py", "exercises/stubs/prefix.py", "model/attention.py"):
        (tmp_path / file).write_text("x = 2\n")
        seen.add(checker_hash())
    (tmp_path / "model" / "notes.txt").write_text("not code")
    assert len(seen) == 4 and checker_hash() in seen


def test_a_failing_file_is_checked_every_time(tmp_path, checks):
    folder = tmp_path / "my_exercises"
    exercises.start(folder)  # the stubs as shipped: not implemented yet
    for _ in range(2):
        with pytest.raises(SystemExit, match=f"{NAME}.py does not pass its check yet"):
            student_code(NAME, folder)
    assert checks == [NAME, NAME] and not (folder / RECORD).exists()


def test_a_file_changed_while_it_was_checked_is_not_remembered(tmp_path, monkeypatch):
    folder = solved(tmp_path)

    def edited_meanwhile(name, folder, *args):
        (folder / f"{name}.py").write_text(SOLUTIONS[f"{name}.py"] + "# changed during the check\n")
        return Report(EXERCISES[name], len(EXERCISES[name].cases))

    monkeypatch.setattr(exercises.isolate, "check_isolated", edited_meanwhile)
    student_code(NAME, folder)
    assert not (folder / RECORD).exists()


BROKEN = {
    "not JSON": b"\xff\x00{not json",
    "a list": b"[1, 2]",
    "entries of another form": b'{"prefix": "x", "masks": {"file": 1, "checker": 2}, "beam": {"file": "a"}}',
    "nested too deep": b"[" * 60_000,
    "too large": b'{"prefix": {"file": "' + b"0" * 2**17 + b'", "checker": "x"}}',
}


@pytest.mark.parametrize("content", BROKEN.values(), ids=BROKEN.keys())
def test_a_broken_record_is_ignored_and_written_anew(tmp_path, passes, content):
    folder = solved(tmp_path)
    (folder / RECORD).write_bytes(content)
    student_code(NAME, folder)
    student_code(NAME, folder)
    assert passes == [NAME]
    assert set(json.loads((folder / RECORD).read_text())) == {NAME}


@pytest.mark.parametrize("kind", ["folder", "pipe"])
def test_a_record_that_is_no_file_is_ignored(tmp_path, passes, kind):
    folder = solved(tmp_path)
    os.mkdir(folder / RECORD) if kind == "folder" else os.mkfifo(folder / RECORD)  # a pipe must not block the read
    student_code(NAME, folder)
    student_code(NAME, folder)
    if kind == "folder":  # it cannot be replaced: checked every time, and no temporary file is left
        assert passes == [NAME, NAME] and sorted(p.name for p in folder.iterdir()) == [RECORD, f"{NAME}.py"]
    else:  # the pipe is replaced by a record
        assert passes == [NAME] and (folder / RECORD).is_file()


def test_grading_always_checks(tmp_path, checks):
    """A record claiming that the stub as shipped passed skips the student's own check before their run (all
    the record is trusted for), but `python -m exercises check` checks the file and fails it."""
    folder = tmp_path / "my_exercises"
    exercises.start(folder)
    record = {NAME: {"file": file_hash(STUBS / f"{NAME}.py"), "checker": checker_hash()}}
    (folder / RECORD).write_text(json.dumps(record))
    student_code(NAME, folder)
    assert checks == []
    assert exercises_main(["check", NAME, "--dir", str(folder)]) == 1
    assert checks == [NAME]
