"""The project's rooms: the commands are leaves, and the library never imports upward.

model/ needs only torch (and safetensors for model files); data/ and metrics/ never drive the model (data/
takes from model/ only model.errors, the one base class of the errors a user can fix, and model.files, which
reads a file someone handed you within bounds);
captioner/ (the Python API) sits on model/ and data/; training/ (what train.py runs) sits on
captioner/, model/, data/ and metrics/; exercises/ checks students' code against model/
and plugs it in; bench/ measures what the library and training/ run (train.py's settings and step, not
train.py); train.py, generate.py and evaluate.py import the library and never each other, and nothing
else imports them: not the library, not bench/, not the notebooks. Only the tests import them, to run a
command's main() in-process.
"""

import ast
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"train", "generate", "evaluate"}
PROJECT = {"model", "data", "metrics", "captioner", "training", "exercises", "bench", "notebooks", "tests"} | COMMANDS


def imported(source, whole=False):
    """The top-level names of every module a piece of Python source imports (whole=True: the full names)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {alias.name if whole else alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module if whole else node.module.split(".")[0])
    return names


def notebook_source(path):
    """A notebook's code cells as Python, each shell (!) and magic (%) line replaced by `pass`."""
    cells = ["".join(c["source"]) for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    lines = [line for cell in cells for line in cell.splitlines()]
    return "\n".join(line[: len(line) - len(line.lstrip())] + "pass" if line.lstrip().startswith(("!", "%")) else line
                     for line in lines)


def sources():
    """(path relative to the root, the project modules it imports) for every module and notebook."""
    for path in sorted(ROOT.rglob("*.py")):
        if ".git" not in path.parts:
            yield path.relative_to(ROOT), imported(path.read_text()) & PROJECT
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        yield path.relative_to(ROOT), imported(notebook_source(path)) & PROJECT


def test_the_import_reader_sees_every_form():
    assert imported("import train\nfrom generate import main\nimport model.vit as v\nfrom data import x") == {
        "train", "generate", "model", "data"}
    assert imported("if True:\n    import evaluate") == {"evaluate"}


def test_no_module_imports_a_command():
    wrong = []
    for path, names in sources():
        if path.parts[0] != "tests":  # the tests run the commands' main() in-process
            wrong += [f"{path} imports {name}.py" for name in sorted(names & COMMANDS - {path.stem})]
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("room, may_import", [
    ("model", {"model"}),
    ("data", {"data"}),
    ("metrics", {"metrics"}),
    ("captioner", {"captioner", "model", "data"}),
    ("training", {"training", "captioner", "model", "data", "metrics"}),
    ("exercises", {"exercises", "model"}),
    ("bench", {"model", "data", "metrics", "captioner", "training"}),
    ("notebooks", {"model", "data", "metrics", "captioner", "exercises"}),
])
def test_the_library_never_imports_upward(room, may_import):
    wrong = [f"{path} imports {sorted(names - may_import)}" for path, names in sources()
             if path.parts[0] == room and len(path.parts) > 1 and names - may_import - {"model"}]
    for path, names in sources():  # model/ only through model.errors and model.files, where not allowed
        if path.parts[0] == room and "model" not in may_import and path.suffix == ".py":
            wrong += [f"{path} imports {name}" for name in sorted(imported((ROOT / path).read_text(), whole=True))
                      if name.split(".")[0] == "model" and name not in ("model.errors", "model.files")]
    assert not wrong, "\n".join(wrong)


def test_nothing_but_the_conversion_command_unpickles_freely():
    """Only `python -m captioner.convert --trust-pickle` may read a file with full unpickling (the user's
    explicit consent); every other load is weights_only=True or safetensors. Tests are exempt: they build
    hostile files and prove them hostile."""
    found = [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.suffix in (".py", ".ipynb")
             and ".git" not in p.parts and p.parts[len(ROOT.parts)] != "tests"
             and ("weights_only=False" in p.read_text() or "pickle.load" in p.read_text())]
    assert found == ["captioner/convert.py"]


def test_every_function_reads_on_one_screen():
    """No function or method in the project is over 60 lines, bench and tests included: one a student
    can read in one sitting (tests/test_layout.py measures from `def` to its last line)."""
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        if ".git" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not long, "\n".join(long)


def test_the_decoder_reads_as_the_lesson():
    """model/decoder.py stays short, and a reader who opens it to change the decoder meets at most 15 definitions:
    its own and those it imports from the rest of model/. Another layout (ClipCap's) and the fast path (a compiled,
    fixed-length step) are files of their own; the decoder's code does not branch on them."""
    path = ROOT / "model" / "decoder.py"
    tree = ast.parse(path.read_text())
    assert len(path.read_text().splitlines()) <= 250
    own = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    used = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    imported = {alias.asname or alias.name for node in tree.body if isinstance(node, ast.ImportFrom)
                and node.module.startswith("model") for alias in node.names}
    assert len(own | (imported & used)) <= 15, sorted(own | (imported & used))
    decoder = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "CaptionDecoder")
    layout = [f"line {node.lineno}" for method in decoder.body if isinstance(method, ast.FunctionDef)
              and method.name != "__init__" for node in ast.walk(method)
              if isinstance(node, ast.Attribute) and node.attr in ("gpt_prefix", "compiled", "position")]
    assert not layout, f"CaptionDecoder branches on a layout or a fast path at {', '.join(layout)}"
