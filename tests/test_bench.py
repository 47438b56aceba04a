"""The benchmarks are not run by the tests (they take minutes to hours), but each must still import:
what it takes from train.py, model/ and data/ has to exist, or the next person to measure finds it broken."""

import importlib
from pathlib import Path

import pytest

BENCH = sorted(p for p in (Path(__file__).resolve().parents[1] / "bench").glob("*.py") if p.stem != "__init__")


def test_there_are_benchmarks():
    assert len(BENCH) >= 9


@pytest.mark.parametrize("path", BENCH, ids=[p.stem for p in BENCH])
def test_benchmark_imports_as_python_m_bench_name_runs_it(path):
    """As `python -m bench.NAME` imports it from the repository root: the imports and definitions run;
    main() only runs as a script. No benchmark edits sys.path to find the project."""
    module = importlib.import_module(f"bench.{path.stem}")
    assert callable(module.main) and "sys.path" not in path.read_text()
