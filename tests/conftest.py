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

SHARED_DATA = os.path.join(os.path.dirname(ROOT), "shared", "data")  # beside the checkout; absent in a user's clone


def shared_file(*parts):
    """Path of a file in ../shared/data, or skip the test cleanly when it is absent."""
    path = os.path.join(SHARED_DATA, *parts)
    if not os.path.exists(path):
        pytest.skip(f"{path} is not present (../shared is only beside the project's own checkout)")
    return path


@pytest.fixture(scope="session")
def shapes_checkpoint(tmp_path_factory):
    """A captioner trained on the built-in shapes for 3 epochs (about two minutes on 2 CPU cores)."""
    import train

    out = tmp_path_factory.mktemp("shapes-run")
    train.main(["--epochs", "3", "--out", str(out)])
    return out / "checkpoint.pt"
