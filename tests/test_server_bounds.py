"""The server under the second round of hostile use (issue 34): a JPEG of thousands of scans that takes a
minute to decode, slow clients that hold connections open, and Host names on an address other than 127.0.0.1.
The model is tiny and random (built in milliseconds): these tests are about the server, not the captions."""

import io

import pytest
import torch
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the server's packages are not installed (requirements.txt)")
from fastapi.testclient import TestClient  # noqa: E402

from captioner import Captioner  # noqa: E402
from data.images import CLIP_MEAN, CLIP_STD  # noqa: E402
from data.tokenizer import WordTokenizer  # noqa: E402
from model.caption_model import build_caption_model  # noqa: E402
from model.decoder import DecoderConfig  # noqa: E402
from model.vit import ViTConfig  # noqa: E402
from server.app import create_app  # noqa: E402
from server.limits import ServerLimits  # noqa: E402


@pytest.fixture(scope="module")
def captioner():
    torch.manual_seed(0)
    tokenizer = WordTokenizer(["a", "red", "square"])
    vit = ViTConfig(image_size=16, patch_size=8, width=16, layers=1, heads=2)
    decoder = DecoderConfig(width=16, layers=1, heads=2, prefix_len=1, max_len=4, dropout=0.0)
    model = build_caption_model(vit, decoder, tokenizer.vocab_size).eval()
    return Captioner(model, tokenizer, {"kind": "squash", "image_size": 16, "mean": CLIP_MEAN, "std": CLIP_STD})


def png(size=(20, 20)):
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 30)).save(buffer, "PNG")
    return buffer.getvalue()


def post(client, data, name="photo.png", headers=None):
    return client.post("/api/caption", files={"image": (name, data, "image/png")}, data={"attention": "false"},
                       headers=headers)


def one_line(answer):
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 300, detail
    return detail


def served_by_serve_py(captioner, tmp_path, monkeypatch, *flags):
    """What serve.py gives uvicorn.run for these flags: {"app": the app, option: value} (uvicorn.run replaced)."""
    import uvicorn

    import serve

    captioner.save_pretrained(tmp_path / "model")
    served = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: served.update(app=app, **options))
    serve.main([str(tmp_path / "model"), *flags])
    return served


def app_of_serve_py(captioner, tmp_path, monkeypatch, *flags):
    return served_by_serve_py(captioner, tmp_path, monkeypatch, *flags)["app"]


@pytest.mark.parametrize("host", ["0.0.0.0", "127.0.0.2", "127.1", "::", "192.168.1.20"])
def test_the_host_check_is_on_whatever_address_the_server_listens_on(captioner, host, tmp_path, monkeypatch):
    """Before, the Host check was on only for the literal names 127.0.0.1, localhost and ::1: serve.py --host
    0.0.0.0 (or 127.0.0.2, or 127.1) answered Host: evil.example with a 200, so another site's name pointed at
    this machine (DNS rebinding) could read the API. Now every address keeps the check."""
    client = TestClient(app_of_serve_py(captioner, tmp_path, monkeypatch, "--host", host, "--allow-host", "captioner.lan"),
                        base_url="http://127.0.0.1")
    for evil in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example", "captioner.lan.evil.example"]:
        answer = client.get("/api/model", headers={"host": evil})
        assert answer.status_code == 421 and "--allow-host" in one_line(answer), (host, evil, answer.text)
        assert post(client, png(), headers={"host": evil}).status_code == 421, (host, evil)
    listening = f"[{host}]:8000" if ":" in host else f"{host}:8000"
    for good in ["localhost:8000", "127.0.0.1", "[::1]:8000", "captioner.lan", "CAPTIONER.LAN:8000", listening]:
        assert client.get("/api/model", headers={"host": good}).status_code == 200, (host, good)
    assert post(client, png(), headers={"host": "captioner.lan:8000"}).status_code == 200


def test_a_server_on_every_address_answers_to_this_machines_addresses_and_name(captioner, tmp_path, monkeypatch):
    """On 0.0.0.0 the page is reached at one of this machine's addresses or names: an address typed as
    numbers cannot be rebound by another site, so any address is answered, and so is the machine's own name."""
    import socket

    client = TestClient(app_of_serve_py(captioner, tmp_path, monkeypatch, "--host", "0.0.0.0"), base_url="http://127.0.0.1")
    for good in ["192.168.1.20:8000", "10.0.0.7", "[fe80::1]:8000", socket.gethostname()]:
        assert client.get("/api/model", headers={"host": good}).status_code == 200, good
    assert client.get("/api/model", headers={"host": "evil.example"}).status_code == 421


def test_a_jpeg_of_thousands_of_scans_gets_a_400_at_once_and_frees_its_decode_slot(captioner):
    """Two uploads of a small JPEG with thousands of extra scans held both image-decode slots for minutes (52 s
    each for a 0.7 MB 6000 x 6000 one), and a normal request waited behind them; --seconds covers only the
    token decoding. Here, with one slot: a 2000 x 2000 JPEG of 2,010 scans (96 kB) took about 4.5 s to answer, a 200.
    Its scans are now counted before decoding: a 400 in one line, and the next upload decodes at once."""
    import time

    from tests.test_images import progressive_jpeg

    client = TestClient(create_app(captioner, ServerLimits(image_decodes=1)), base_url="http://127.0.0.1")
    hostile = progressive_jpeg((2000, 2000), extra_scans=2000)
    for _ in range(2):
        started = time.perf_counter()
        answer = post(client, hostile, name="scans.jpg")
        assert answer.status_code == 400 and time.perf_counter() - started < 1, (answer.status_code, answer.text)
        assert one_line(answer).startswith("scans.jpg: a JPEG of 2,010 scans, where this loader decodes at most")
    started = time.perf_counter()
    assert post(client, progressive_jpeg((2000, 2000)), name="photo.jpg").status_code == 200
    assert time.perf_counter() - started < 1


def test_slow_clients_cannot_hold_every_connection(captioner, tmp_path, monkeypatch):
    """1,100 clients each sending a byte of a request's head every few seconds held 1,100 open files, past the
    usual limit of 1,024, and normal requests failed ("Too many open files"): no connection was ever refused
    or timed out. Here, with --max-connections 20 and --read-timeout 1, 30 slow clients: 10 are refused at
    once, a normal request meanwhile gets a quick 503, the 20 held are closed after a second, and a normal
    request is then answered."""
    import select
    import socket
    import time
    import urllib.error
    import urllib.request

    from tests.conftest import serving

    flags = ["--max-connections", "20", "--read-timeout", "1"]
    options = {key: value for key, value in served_by_serve_py(captioner, tmp_path, monkeypatch, *flags).items()
               if key not in ("app", "host", "port", "log_level")}

    def status(address):
        try:
            with urllib.request.urlopen(address + "/api/model", timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as e:
            return e.code

    def closed(clients, wait):
        """How many of `clients` the server closes within `wait` seconds (after a 503 or a 408, or a reset)."""
        open_, ended = list(clients), 0
        stop = time.monotonic() + wait
        while open_ and time.monotonic() < stop:
            readable, _, _ = select.select(open_, [], [], max(0.0, stop - time.monotonic()))
            for client in readable:
                try:
                    if client.recv(4096):
                        continue  # the answer; the end comes next
                except ConnectionResetError:
                    pass
                open_.remove(client)
                ended += 1
        return ended

    with serving(create_app(captioner, ServerLimits()), **options) as address:
        port = int(address.rsplit(":", 1)[1])
        clients = []
        try:
            for _ in range(30):
                client = socket.create_connection(("127.0.0.1", port), timeout=0.5)
                client.sendall(b"GET /api/model HTTP/1.1\r\nHo")  # a request's head, never finished
                clients.append(client)
            assert closed(clients, wait=0.3) == 10
            started = time.perf_counter()
            assert status(address) == 503 and time.perf_counter() - started < 1
            assert closed(clients, wait=1.5) == 30
            assert status(address) == 200
        finally:
            for client in clients:
                client.close()
