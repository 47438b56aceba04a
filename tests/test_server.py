"""The web page's JSON API, in-process and through a real server: every endpoint, every bad upload, and
32 requests at once, each answered with its own image's caption."""

import dataclasses
import io
import json
import threading
import urllib.request
import uuid

import pytest
from PIL import Image

fastapi = pytest.importorskip("fastapi", reason="the server's packages are not installed (requirements.txt)")
from fastapi.testclient import TestClient  # noqa: E402

from captioner import Captioner  # noqa: E402
from data.shapes import make_split  # noqa: E402
from model.sampling import DecodingOptions  # noqa: E402
from server.app import create_app  # noqa: E402
from server.limits import ServerLimits  # noqa: E402

SCALE = 4


def png(image):
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scenes():
    return make_split("test", 32, 32)


def scene_png(scene):
    return png(Image.fromarray(scene.image).resize((32 * SCALE, 32 * SCALE), Image.NEAREST))


@pytest.fixture(scope="module")
def captioner(shapes_model):
    return Captioner.from_pretrained(shapes_model)


@pytest.fixture(scope="module")
def client(captioner):
    limits = ServerLimits(max_bytes=300_000, max_pixels=4_000_000)
    return TestClient(create_app(captioner, limits, name="shapes"), base_url="http://127.0.0.1")


def post(client, data, name="scene.png", **fields):
    return client.post("/api/caption", files={"image": (name, data, "image/png")}, data=fields)


def test_a_request_builds_its_decoding_options_once(client, scenes, monkeypatch):
    """The page's form becomes one DecodingOptions, which reaches the model's decode() as that object."""
    import model.caption_model
    from model.sampling import decode

    built, decoded = [], []
    real_init = DecodingOptions.__post_init__
    monkeypatch.setattr(DecodingOptions, "__post_init__", lambda self: (built.append(self), real_init(self))[1])
    monkeypatch.setattr(model.caption_model, "decode", lambda *args, **kw: (decoded.append(args[5]), decode(*args, **kw))[1])
    assert post(client, scene_png(scenes[0]), beam="2").status_code == 200
    assert len(built) == 1 and built[0].beam == 2 and decoded == [built[0]] and decoded[0] is built[0]


def test_model_info_lists_every_decoding_option(client, captioner):
    info = client.get("/api/model").json()
    assert [o["name"] for o in info["options"]] == [f.name for f in dataclasses.fields(DecodingOptions)]
    assert {"beam", "temperature", "top_k", "top_p", "num", "seed", "no_repeat_ngram_size"} <= {
        o["name"] for o in info["options"]}
    assert all(o["help"] for o in info["options"])
    decoder = captioner.model.decoder.config
    assert (info["layers"], info["heads"], info["grid"]) == (decoder.layers, decoder.heads, 4)


def test_caption_with_attention_equals_the_python_api(client, captioner, scenes):
    data = scene_png(scenes[0])
    answer = post(client, data).json()
    image = Image.open(io.BytesIO(data))
    assert answer["captions"] == [captioner.caption(image)]  # one implementation, not a copy
    n, L, H = len(answer["words"]), answer.get("layers", 2), 4
    assert " ".join(answer["words"]) == answer["captions"][0]
    attention = answer["attention"]
    assert (len(attention), len(attention[0]), len(attention[0][0]), len(attention[0][0][0])) == (L, H, n, 4)
    for word_map in attention[0][0]:  # each word's map over the 4 x 4 patches sums to 1
        assert abs(sum(map(sum, word_map)) - 1) < 1e-3
    assert abs(sum(map(sum, answer["rollout"])) - 1) < 1e-3
    assert answer["view_box"] == [0, 0, 128, 128] and (answer["width"], answer["height"]) == (128, 128)


def test_every_decoding_option_and_regions(client, captioner, scenes):
    data = scene_png(scenes[1])
    image = Image.open(io.BytesIO(data))
    assert post(client, data, beam="3").json()["captions"] == [captioner.caption(image, beam=3)]
    sampled = post(client, data, temperature="1.5", top_k="5", top_p="0.9", num="3", seed="7", max_len="8").json()
    assert sampled["captions"] == captioner.caption(image, temperature=1.5, top_k=5, top_p=0.9, num=3, seed=7,
                                                    max_len=8)
    assert len(sampled["captions"]) == 3
    repeats = post(client, data, beam="2", no_repeat_ngram_size="1", repetition_penalty="1.5").json()
    assert repeats["captions"] == [captioner.caption(image, beam=2, no_repeat_ngram_size=1, repetition_penalty=1.5)]
    x0, y0, x1, y1 = (SCALE * v for v in scenes[1].objects[0].box)
    region = post(client, data, region=f"{x0},{y0},{x1 + 1},{y1 + 1}", attention="false").json()
    assert region["captions"] == [captioner.caption(image, region=(x0, y0, x1 + 1, y1 + 1))]
    assert region["attention"] is None and sum(map(sum, region["region"])) >= 1


@pytest.mark.parametrize("name, data, fields, status, message", [
    ("empty.png", b"", {}, 400, "empty.png: the upload is empty"),
    ("notes.txt", b"just some text", {}, 400, "notes.txt: not an image file"),
    ("cut.png", "TRUNCATED", {}, 400, "cut.png: damaged or truncated image"),
    ("huge.png", b"\x89PNG" + b"0" * 400_000, {}, 413, "larger than the 0.3 MB"),
    ("bomb.png", "BOMB", {}, 413, "bomb.png: 4000x2000 pixels is more than the 4,000,000"),
    ("scene.png", "SCENE", {"region": "600,600,700,700"}, 400, "lies outside scene.png (128x128)"),
    ("scene.png", "SCENE", {"region": "40,40,20,60"}, 400, "empty box"),
    ("scene.png", "SCENE", {"region": "1,2,3"}, 400, "expected four numbers"),
    ("scene.png", "SCENE", {"temperature": "-1"}, 400, "temperature must be 0 (greedy) or above"),
    ("scene.png", "SCENE", {"top_k": "many"}, 400, "top_k must be a whole number"),
    ("scene.png", "SCENE", {"num": "3"}, 400, "num > 1 needs sampling"),
    ("../../etc/passwd", b"root:x:0:0", {}, 400, "passwd: not an image file"),  # a path is only a name
])
def test_bad_uploads_get_a_4xx_with_one_line_and_the_server_goes_on(client, scenes, name, data, fields, status,
                                                                     message):
    good = scene_png(scenes[2])
    data = {"TRUNCATED": good[: len(good) // 2], "BOMB": png(Image.new("L", (4000, 2000))), "SCENE": good}.get(data, data)
    answer = post(client, data, name, **fields)
    assert answer.status_code == status
    detail = answer.json()["detail"]
    assert message in detail and "\n" not in detail
    assert post(client, good).status_code == 200  # still serving


def test_a_request_without_a_file(client):
    answer = client.post("/api/caption", data={"beam": "2"})
    assert answer.status_code == 400 and "file field 'image'" in answer.json()["detail"]


def test_the_page_and_its_files_are_served_and_nothing_else(client):
    assert "<canvas id=\"overlay\"" in client.get("/").text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200 and "/api/caption" in client.get("/openapi.json").text
    for path in ["/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py", "/model.safetensors"]:
        assert client.get(path).status_code == 404, path


def upload(url, data, name):
    """POST one image as multipart/form-data with nothing but the standard library."""
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url + "/api/caption", body, {
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def test_32_requests_at_once_each_get_their_own_caption(live_server, captioner, scenes):
    images = [scene_png(s) for s in scenes]
    expected = [captioner.caption(Image.open(io.BytesIO(d))) for d in images]
    assert len(set(expected)) > 10  # distinct images, mostly distinct captions: a mix-up would show
    answers = [None] * len(images)

    def ask(i):
        answers[i] = upload(live_server, images[i], f"{i}.png")["captions"][0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(images))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert answers == expected
