import contextlib
import os
import signal
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def pytest_configure(config):
    """Under pytest-xdist (pytest.ini runs the suite in one worker per core, at most 4) each worker does its
    torch work in its share of the cores, so the workers do not fight over them."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        share = max(1, (os.cpu_count() or 1) // workers)
        torch.set_num_threads(share)
        os.environ["OMP_NUM_THREADS"] = str(share)  # and the processes the tests start (train.py, notebooks' kernels)


def pytest_collection_modifyitems(config, items):
    """The first test that needs the shared trained model runs first, the others last: one worker trains the model
    while the others run the many tests that need none, instead of waiting for it."""
    needs = [item for item in items if "shapes_run" in item.fixturenames]
    if needs:
        rest = [item for item in items if "shapes_run" not in item.fixturenames]
        items[:] = needs[:1] + rest + needs[1:]


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
    """The output folder of the README's main job, `python train.py` (the built-in shapes, about a minute
    on 2 CPU cores), trained once per test run and shared by every test and every pytest-xdist worker
    (the first to ask trains it; the others wait for it): checkpoint.pt, model/, metrics.jsonl."""
    import train
    from filelock import FileLock  # torch's own dependency

    shared = tmp_path_factory.getbasetemp()
    shared = shared.parent if os.environ.get("PYTEST_XDIST_WORKER") else shared  # the workers' common folder
    out = shared / "shapes-run"
    with FileLock(str(out) + ".lock"):
        if not (out / "model" / "config.json").exists():
            train.main(["--out", str(out)])
    return out


@pytest.fixture(scope="session")
def shapes_checkpoint(shapes_run):
    return shapes_run / "checkpoint.pt"


@pytest.fixture(scope="session")
def shapes_model(shapes_run):
    return shapes_run / "model"


@pytest.fixture(scope="session")
def live_server(shapes_model):
    """The web page's app (server/app.py) on the shared model, under uvicorn on a free port of 127.0.0.1,
    in a thread of this process. Yields its address."""
    pytest.importorskip("uvicorn", reason="the server's packages are not installed (requirements.txt)")
    from captioner import Captioner
    from server.app import create_app

    with serving(create_app(Captioner.from_pretrained(shapes_model), name="shapes")) as address:
        yield address


@contextlib.contextmanager
def serving(app, **options):
    """Serve `app` under uvicorn on a free port of 127.0.0.1, in a thread of this process: its address.
    options: more of uvicorn.Config's (serve.py's own, as tests/test_server_bounds.py takes them)."""
    import socket
    import threading

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", **options))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        thread.join(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(5)


class StillRunning(Exception):
    """Raised by within(); not an OSError, so that no reader mistakes it for a damaged file."""


@contextlib.contextmanager
def within(seconds):
    """Fail, instead of hanging the test run, when the block takes longer than `seconds`: SIGALRM interrupts even
    a blocked open() of a named pipe. Main thread, Unix only."""
    def too_long(signum, frame):
        raise StillRunning(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, too_long)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
