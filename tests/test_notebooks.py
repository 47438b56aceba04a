"""Every notebook runs top to bottom, headless, as a Colab user runs it: a copy of the notebook alone, in a
folder outside the repository, whose first cell clones the project and installs its requirements. The
notebooks are committed without outputs, their text states only numbers their cells compute (or that a
named file states), and the README's Colab badges open them."""

import importlib.util
import os
import re
import shutil
import subprocess
from pathlib import Path

import nbformat
import pytest

pytestmark = pytest.mark.xdist_group("notebooks")  # one worker, one Colab folder: notebooks 6 and 7 use 5's model
ROOT = Path(__file__).parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def make_notebooks():
    spec = importlib.util.spec_from_file_location("make_notebooks", ROOT / "notebooks" / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run(nb, folder, env=None):
    from nbclient import NotebookClient

    client = NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(folder)}})
    client.execute(**({"env": env} if env else {}))
    return nb


def output_text(cell):
    parts = []
    for out in cell.get("outputs", []):
        parts.append(out.get("text", "") or out.get("data", {}).get("text/plain", ""))
    return "".join(parts)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """The project as a clone source: the working tree's files (tracked, or new and not ignored) committed to
    a repository of their own, the stand-in for the GitHub repository the notebooks clone in Colab."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs git and a git checkout of the project")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    source = tmp_path_factory.mktemp("published")
    for name in filter(None, listed):
        if (ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, source / name)
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", "-c", "init.defaultBranch=main"]
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "the working tree"]):
        subprocess.run(git + args, cwd=source, check=True)
    return source.as_uri()


@pytest.fixture(scope="module")
def colab(tmp_path_factory):
    """A Colab-like working folder: the notebooks alone, no project above them."""
    folder = tmp_path_factory.mktemp("colab") / "content"
    folder.mkdir()
    assert not (folder.parent / "model").exists()
    return folder


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_outside_the_repository_and_shows_its_figures(path, published, colab):
    """Runs top to bottom from a copy outside the repository (the first cell clones the project from
    `published` and pip-installs requirements.txt, as in Colab; offline here, so pip only confirms what is
    installed). Every cell that ends by drawing (plt.show(), or a matplotlib Figure such as
    attention_figure's as the cell's value) shows a picture, not the text `<Figure size ...>`; every number
    the text states is computed by the cells or stated by the file the notebook names for it; a training
    cell's output is a few progress lines, not thousands."""
    shutil.copy(path, colab / path.name)
    env = dict(os.environ, CAPTIONER_REPO=published, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    nb = run(nbformat.read(colab / path.name, as_version=4), colab, env)
    assert (colab / "captioner" / "model" / "decoder.py").exists(), "the first cell did not clone the project"
    for cell in nb.cells:
        last = cell.source.rstrip().splitlines()[-1] if cell.cell_type == "code" else ""  # not inside a def
        if not last.startswith(" ") and any(draws in last for draws in ("plt.show()", "_figure(", "show_samples(")):
            assert any("image/png" in out.get("data", {}) for out in cell.outputs), f"{path.name}: {cell.source[:80]}"
        if "train.py" in cell.source:
            lines = re.split(r"[\r\n]+", output_text(cell))
            assert len(lines) < 60, f"{path.name}: a training cell printed {len(lines)} lines"
    assert_numbers_are_computed(path.name, nb)
    if path.name.startswith("06"):
        assert_top_p_changes_the_caption(nb)


NUMBER = re.compile(r"(?<![\w.\-])\d[\d,]*(?:\.\d+)?(?![\w])")


def numbers(text):
    text = re.sub(r"[Nn]otebook \d+", "", text)  # "notebook 5" names a notebook, it states no figure
    return {m.group().replace(",", "").rstrip(".") for m in NUMBER.finditer(text)}


def assert_numbers_are_computed(name, nb):
    """Each number in a markdown cell (the title's own number aside) appears in a code cell or an output, or
    QUOTED names the file that states it, and that file does."""
    quoted = make_notebooks().QUOTED.get(name, {})
    computed = set()
    for cell in nb.cells:
        if cell.cell_type == "code":
            computed |= numbers(cell.source) | numbers(output_text(cell))
    title = nb.cells[0].source.splitlines()[0]
    stated = set()
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            stated |= numbers(cell.source.replace(title, "", 1))
    missing = stated - computed - set(quoted)
    assert not missing, f"{name}: the text states {sorted(missing)}, which no cell computes (or add it to QUOTED)"
    for number, (file, text) in quoted.items():
        assert text in (ROOT / file).read_text(), f"{name}: {file} no longer states {text!r} (the text's {number})"


def assert_top_p_changes_the_caption(nb):
    lines = {}
    for cell in nb.cells:
        for line in output_text(cell).splitlines():
            way, _, caption = line.partition("  ")
            lines[way.strip()] = caption.strip()
    assert lines["top-p 0.5, T 2"] != lines["temperature 2"], "the top-p demo shows nothing top-p does"


def test_the_first_cell_uses_the_checkout_it_is_in(tmp_path):
    """In a checkout the first cell imports the project above the notebook, and clones nothing."""
    nb = nbformat.read(NOTEBOOKS[0], as_version=4)
    nb.cells = [nb.cells[1], nbformat.v4.new_code_cell("print(PROJECT)\nimport model; print(model.__file__)")]
    env = dict(os.environ, CAPTIONER_REPO=str(tmp_path / "no such repository"))
    out = output_text(run(nb, NOTEBOOKS[0].parent, env).cells[1]).splitlines()
    assert out == [str(ROOT.resolve()), str(ROOT.resolve() / "model" / "__init__.py")]
    assert not (NOTEBOOKS[0].parent / "captioner").exists()


def test_the_badges_open_the_notebooks_from_where_the_setup_cell_clones():
    module = make_notebooks()
    readme = (ROOT / "README.md").read_text()
    for path in NOTEBOOKS:
        assert f"]({module.colab_link(path.name)})" in readme, f"README: no Colab badge for {path.name}"
        setup = nbformat.read(path, as_version=4).cells[1].source
        assert f'"{module.REPOSITORY}"' in setup and "git" in setup and "requirements.txt" in setup


def test_regenerating_the_notebooks_changes_nothing(tmp_path):
    """The notebooks are written by notebooks/make_notebooks.py: a hand edit to an .ipynb, or a change to
    the script that was not run, shows up here."""
    make_notebooks().main(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        assert (tmp_path / path.name).read_text() == path.read_text(), f"{path.name}: run notebooks/make_notebooks.py"
