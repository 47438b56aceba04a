"""Checked once: train.py and generate.py --student-code skip the check of a file that passed it unchanged.

Before the model runs a student's code, each file is checked in a process of its own (exercises/isolate.py):
about 100 s for all nine. A file that passes is remembered in FOLDER/.checked.json, one entry per exercise:

    {"attention": {"file": "<sha256 of attention.py>", "checker": "<sha256 of the checker>"}, ...}

The checker's hash covers every .py file under exercises/ (the checker, its cases, the stubs) and model/
(the references), and torch's version. The next --student-code skips a file whose two hashes are both the
ones remembered; a change to either, even one character, checks it again. Only a pass is remembered.

Grading (python -m exercises check) never reads the file: it always checks. The file is read as JSON and
nothing else; one that is missing, unreadable, too large or of another form counts as empty. All it can do
is skip the check of the student's own file before their own run.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch

from model.errors import CaptionerError
from model.files import read_json

ROOT = Path(__file__).resolve().parent.parent  # the project
RECORD = ".checked.json"  # in the student's folder, beside the files it speaks of
CHECKER = ("exercises", "model")  # the folders whose .py files the checker and its references are
MOST = 2**16  # bytes: a larger record is not read


def checker_hash():
    """sha256 of the checker as it is now: every .py file under exercises/ and model/ (name and content) and
    torch's version."""
    digest = hashlib.sha256(torch.__version__.encode())
    for folder in CHECKER:
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def file_hash(path):
    """sha256 of the file's content, or None if it cannot be read."""
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def remembered(folder):
    """FOLDER/.checked.json as exercise -> {"file": hash, "checker": hash}; entries of any other form are left
    out, and a record that is missing, not a plain file, larger than MOST bytes or not JSON is {}."""
    try:  # model/files.py: a regular file of at most MOST bytes, valid JSON not nested too deep
        record = read_json(Path(folder) / RECORD, max_bytes=MOST, what="a record of checked files")
    except (CaptionerError, OSError):
        return {}
    if not isinstance(record, dict):
        return {}
    return {name: entry for name, entry in record.items() if isinstance(entry, dict)
            and set(entry) == {"file", "checker"} and all(isinstance(v, str) for v in entry.values())}


def remember(passed, checker, folder):
    """Add passed (exercise -> its file's hash) to FOLDER/.checked.json, written whole to a temporary file
    and renamed over the record. A folder that cannot be written to is no error: the files are checked again."""
    record = remembered(folder) | {name: {"file": digest, "checker": checker} for name, digest in passed.items()}
    temporary = None
    try:
        with tempfile.NamedTemporaryFile("w", dir=folder, prefix=RECORD + ".", suffix=".tmp", delete=False) as f:
            temporary = f.name
            json.dump(record, f, indent=1, sort_keys=True)
        os.replace(temporary, Path(folder) / RECORD)
    except OSError:
        if temporary:
            Path(temporary).unlink(missing_ok=True)


def check_changed(names, folder):
    """Check in processes of their own the names whose file has changed since it last passed its check, or
    whose checker has -> (the names skipped, name -> Report of each checked). Each that passes is remembered,
    unless its file changed while it was checked."""
    from exercises import exercise
    from exercises.isolate import check_all_isolated

    files = {name: Path(folder) / exercise(name).file for name in names}
    checker, record = checker_hash(), remembered(folder)
    before = {name: file_hash(path) for name, path in files.items()}
    skipped = [name for name in names
               if before[name] and record.get(name) == {"file": before[name], "checker": checker}]
    reports = check_all_isolated([name for name in names if name not in skipped], folder)
    passed = {name: before[name] for name, report in reports.items()
              if report.ok and before[name] and file_hash(files[name]) == before[name]}
    if passed:
        remember(passed, checker, folder)
    return skipped, reports
