"""Reading a small file someone handed you: a model's config.json, a tokenizer's vocab.json and merges.txt.

A file is opened only if it is a regular file (a named pipe waits forever for a writer, /dev/zero never ends)
no larger than a cap far above any real one, so reading it costs bounded time and memory. JSON nested deeper
than Python's recursion limit is refused, not a RecursionError. Every refusal is one sentence naming the file
(model/errors.py). data/ reads its tokenizer files through here: this module needs only the standard library.
"""

import json
import os
import stat

from model.errors import CaptionerError

MAX_JSON_BYTES = 64 * 2**20  # a config is a few kB; one that carries a GPT-2 tokenizer about 2 MB


def regular_file(path, error=CaptionerError):
    """`path` if it is a regular file (links followed). A folder, a named pipe (reading it waits forever) or a
    device such as /dev/zero (reading it never ends) is `error`, naming it; so is a path that does not exist."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: {file_kind(mode)}, not a regular file")
    return path


def file_kind(mode):
    """What a file that is not a regular one is, from its st_mode, in words: "a folder", "a named pipe"..."""
    return ("a folder" if stat.S_ISDIR(mode) else "a named pipe" if stat.S_ISFIFO(mode)
            else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a special file")


def read_text(path, max_bytes, what, error=CaptionerError):
    """The UTF-8 text of a regular file of at most max_bytes (`what` names such a file in the refusal)."""
    size = os.stat(regular_file(path, error)).st_size
    if size > max_bytes:
        raise error(f"{path}: {size:,} bytes is more than {what} holds ({max_bytes:,} at most)")
    with open(path, "rb") as f:
        raw = f.read(max_bytes + 1)  # a file that grew since stat is cut here, not read to its end
    if len(raw) > max_bytes:
        raise error(f"{path}: more than {what} holds ({max_bytes:,} bytes at most)")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{path}, line {line}: bytes that are not UTF-8 ({raw[e.start:e.start + 4]!r})") from None


def read_json(path, error=CaptionerError, max_bytes=MAX_JSON_BYTES, what="a JSON file of a model"):
    """A JSON file as Python values; one that is not JSON, or not a regular file of sane size, is `error`."""
    text = read_text(path, max_bytes, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:  # json reads nested arrays and objects recursively
        raise error(f"{path}: not valid JSON (nested deeper than {what} ever is)") from None
