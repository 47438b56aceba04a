import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)
    yield

def shared_file(*parts):
    """Path of a file in ../shared/data (data/paths.py), or skip the test cleanly when it is absent."""
    from data.paths import SHARED_DATA

    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not present (../shared is only beside the project's own checkout)")
    return path


@pytest.fixture(scope="session")
def shapes_run(tmp_path_factory):
    """The output folder of a captioner trained on the built-in shapes for 3 epochs (about two minutes on 2
    CPU cores): checkpoint.pt and the model folder model/."""
    import train

    out = tmp_path_factory.mktemp("shapes-run")
    train.main(["--epochs", "3", "--out", str(out)])
    return out


@pytest.fixture(scope="session")
def shapes_checkpoint(shapes_run):
    return shapes_run / "checkpoint.pt"


@pytest.fixture(scope="session")
def shapes_model(shapes_run):
    return shapes_run / "model"
