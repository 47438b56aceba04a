"""The benchmarks are not run by the tests (they take minutes to hours), but each must still import:
what it takes from train.py, model/ and data/ has to exist, or the next person to measure finds it broken."""

import importlib.util
from pathlib import Path

import pytest

BENCH = sorted((Path(__file__).resolve().parents[1] / "bench").glob("*.py"))


def test_there_are_benchmarks():
    assert len(BENCH) >= 9


@pytest.mark.parametrize("path", BENCH, ids=[p.stem for p in BENCH])
def test_benchmark_imports(path):
    spec = importlib.util.spec_from_file_location(f"bench_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # runs the imports and definitions; main() only runs as a script
    assert callable(module.main)
