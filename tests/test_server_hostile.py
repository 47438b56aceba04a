"""The server under hostile use (issue 22): every option value a client can send gets a 200 or a one-line
400, never a 500; limits name their flag; a request past its time is stopped; a small request is answered
within a second while the largest allowed one runs; a chunked body over the limit gets 413; another host
name or another site's page is refused; every answer carries the security headers; /docs needs no network;
16 large uploads at once stay within bounded memory."""

import dataclasses
import io
import re
import threading
import time

import pytest
import torch
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the server's packages are not installed (requirements.txt)")
from fastapi.testclient import TestClient  # noqa: E402

from bench.serve_load import upload  # noqa: E402 - the bench's client: a multipart POST as a browser sends it
from captioner import Captioner  # noqa: E402
from data.shapes import make_split  # noqa: E402
from model.sampling import DecodingOptions  # noqa: E402
from server.app import create_app  # noqa: E402
from server.limits import ServerLimits  # noqa: E402
from tests.conftest import serving  # noqa: E402


@pytest.fixture(scope="module")
def captioner(shapes_model):
    return Captioner.from_pretrained(shapes_model)


@pytest.fixture(scope="module")
def client(captioner):
    limits = ServerLimits(max_bytes=300_000)
    return TestClient(create_app(captioner, limits, name="shapes"), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def scene():
    buffer = io.BytesIO()
    Image.fromarray(make_split("test", 1, 32)[0].image).resize((128, 128), Image.NEAREST).save(buffer, "PNG")
    return buffer.getvalue()


def post(client, data, headers=None, **fields):
    return client.post("/api/caption", files={"image": ("scene.png", data, "image/png")}, data=fields,
                       headers=headers)


def one_line(answer):
    detail = answer.json()["detail"]
    assert isinstance(detail, str) and "\n" not in detail and len(detail) < 300, detail
    return detail


HOSTILE_VALUES = ["nan", "inf", "-inf", "1e309", "-1", "0", "1e-300", "9" * 30, "2.5", "many", " 3 "]


def test_no_option_value_gives_a_500(client, scene):
    seen = set()
    for field in dataclasses.fields(DecodingOptions):
        for value in HOSTILE_VALUES:
            for extra in ({}, {"temperature": "1"}):  # greedy, and sampled (where top_k, top_p and num act)
                if field.name == "temperature" and extra:
                    continue
                answer = post(client, scene, **{field.name: value, **extra})
                assert answer.status_code in (200, 400), (field.name, value, extra, answer.text)
                seen.add(answer.status_code)
                if answer.status_code == 400:
                    one_line(answer)
    assert seen == {200, 400}
    for region in ["nan,0,10,10", "0,0,inf,10", "-1e309,0,5,5", "1,2,3,4,5", "0,0," + "9" * 400 + ",5"]:
        answer = post(client, scene, region=region)
        assert answer.status_code == 400 and "region" in one_line(answer), (region, answer.text)


def test_each_limit_is_refused_naming_its_flag(client, scene):
    for fields, flag in [(dict(num="9", temperature="1"), "--max-num"), (dict(beam="9"), "--max-beam"),
                         (dict(max_len="129"), "--max-len")]:
        answer = post(client, scene, **fields)
        assert answer.status_code == 400 and flag in one_line(answer), answer.text
    assert post(client, scene, num="8", temperature="1").status_code == 200  # the limit itself is allowed


def test_decoding_past_the_time_limit_is_stopped_with_a_503(captioner, scene):
    client = TestClient(create_app(captioner, ServerLimits(max_num=100_000, seconds=0.3)), base_url="http://127.0.0.1")
    began = time.perf_counter()
    answer = post(client, scene, num="20000", temperature="1")  # alone, about 2 minutes here
    assert answer.status_code == 503 and "--seconds" in one_line(answer)
    assert time.perf_counter() - began < 10
    assert post(client, scene).status_code == 200


def test_a_small_request_is_answered_within_a_second_while_the_largest_runs(captioner, scene):
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, threads // 2))  # as serve.py does
    try:
        with serving(create_app(captioner, ServerLimits(max_num=400))) as address:
            url = address + "/api/caption"
            upload(url, scene)  # warm-up
            large = {}

            def ask_large():
                began = time.perf_counter()
                large["captions"] = upload(url, scene, num=400, temperature=1.0)["captions"]  # a 200, or it raises
                large["seconds"], large["ended"] = time.perf_counter() - began, time.perf_counter()

            thread = threading.Thread(target=ask_large)
            thread.start()
            time.sleep(0.5)
            began = time.perf_counter()
            assert len(upload(url, scene)["captions"]) == 1
            small_ended = time.perf_counter()
            thread.join(120)
    finally:
        torch.set_num_threads(threads)
    assert len(large["captions"]) == 400
    assert large["ended"] > small_ended + 0.5, "the large request ended too soon to show anything"
    assert small_ended - began < 1.0, f"a small request waited {small_ended - began:.1f} s behind a large one"


def test_a_chunked_upload_over_the_limit_gets_413(client):
    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=\"image\"; filename=\"big.png\"\r\n\r\n"
        for _ in range(40):
            yield b"0" * 10_000  # 400 kB in all, no Content-Length
        yield b"\r\n--x--\r\n"

    answer = client.post("/api/caption", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert answer.status_code == 413 and "larger than the 0.3 MB" in one_line(answer)


def test_requests_for_another_host_or_from_another_site_are_refused(client, scene):
    for host in ["evil.example", "evil.example:8000", "127.0.0.1.evil.example"]:
        answer = client.get("/api/model", headers={"host": host})
        assert answer.status_code == 421 and "--allow-host" in one_line(answer), host
    for host in ["localhost:8000", "127.0.0.1:8000", "[::1]:8000"]:
        assert client.get("/api/model", headers={"host": host}).status_code == 200, host
    for origin in ["http://evil.example", "null", "http://127.0.0.1:9999"]:
        answer = post(client, scene, headers={"origin": origin})
        assert answer.status_code == 403 and "another site" in one_line(answer), origin
    assert post(client, scene, headers={"origin": "http://127.0.0.1"}).status_code == 200  # the page itself
    answer = client.get("/api/model", headers={"origin": "http://evil.example"})
    assert "access-control-allow-origin" not in answer.headers  # no other site can read an answer


def test_every_answer_carries_the_security_headers(client, scene):
    answers = [client.get(path) for path in ["/", "/docs", "/api/model", "/static/app.js", "/nothing"]]
    answers += [post(client, b"not an image"), post(client, b"0" * 400_000), client.get("/", headers={"host": "x"})]
    for answer in answers:
        assert "default-src 'self'" in answer.headers["content-security-policy"], answer.request.url
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["x-frame-options"] == "DENY"


def test_the_docs_need_nothing_from_the_network(client):
    page = client.get("/docs").text
    assert re.findall(r"(?:src|href)=\"([^\"]+)\"", page) and all(
        link.startswith("/") for link in re.findall(r"(?:src|href)=\"([^\"]+)\"", page))
    assert "http" not in client.get("/static/docs.js").text.replace("location.origin", "")
    assert "/api/caption" in client.get("/openapi.json").json()["paths"]


def test_no_more_images_are_decoded_at_once_than_the_limit(captioner, scene, monkeypatch):
    """Eight clients upload at once through uvicorn; with --image-decodes 2, at most 2 images are ever being
    decoded (each may hold its full size in memory while it decodes)."""
    import server.app

    busy, most, lock = [0], [0], threading.Lock()
    real = server.app.load_image

    def counting(*args, **kwargs):
        with lock:
            busy[0] += 1
            most[0] = max(most[0], busy[0])
        time.sleep(0.2)  # long enough for the others to arrive
        try:
            return real(*args, **kwargs)
        finally:
            with lock:
                busy[0] -= 1

    monkeypatch.setattr(server.app, "load_image", counting)
    with serving(create_app(captioner, ServerLimits(image_decodes=2))) as address:
        url = address + "/api/caption"
        threads = [threading.Thread(target=upload, args=(url, scene), kwargs={"attention": "false"}) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
    assert most[0] == 2
