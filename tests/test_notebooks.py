"""Every notebook runs top to bottom, headless, and is committed without outputs."""

from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


def test_there_are_notebooks():
    assert NOTEBOOKS


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: clear the outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs_and_shows_its_figures(path):
    """Runs top to bottom; every cell that ends by drawing (plt.show(), or a matplotlib Figure such as
    attention_figure's as the cell's value) shows a picture, not the text `<Figure size ...>`."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    for cell in nb.cells:
        last = cell.source.rstrip().splitlines()[-1] if cell.cell_type == "code" else ""  # not inside a def
        if not last.startswith(" ") and any(draws in last for draws in ("plt.show()", "_figure(", "show_samples(")):
            assert any("image/png" in out.get("data", {}) for out in cell.outputs), f"{path.name}: {cell.source[:80]}"


def test_regenerating_the_notebooks_changes_nothing(tmp_path):
    """The notebooks are written by notebooks/make_notebooks.py: a hand edit to an .ipynb, or a change to
    the script that was not run, shows up here."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS[0].parent / "make_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(tmp_path)
    assert sorted(p.name for p in tmp_path.glob("*.ipynb")) == [p.name for p in NOTEBOOKS]
    for path in NOTEBOOKS:
        assert (tmp_path / path.name).read_text() == path.read_text(), f"{path.name}: run notebooks/make_notebooks.py"
