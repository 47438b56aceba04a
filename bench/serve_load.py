"""Requests per second and latency of the web page's API, at 1 and 8 clients at once.

    python bench/serve_load.py runs/shapes/model [--requests 64]

Starts the app of serve.py under uvicorn on a free port of 127.0.0.1 in this process, then each client
(a thread) posts built-in scenes to /api/caption, with attention maps, as the page does; bounded in
count, loopback only.
"""

import argparse
import io
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.request
import uuid

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from captioner.api import Captioner  # noqa: E402
from data.shapes import make_split  # noqa: E402
from server.app import create_app  # noqa: E402


def upload(url, data):
    boundary = uuid.uuid4().hex
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scene.png\"\r\n"
            f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", help="a model folder or checkpoint.pt")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    args = p.parse_args()
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(create_app(Captioner.from_pretrained(args.model)), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}/api/caption"
    images = []
    for scene in make_split("test", 16, 32):
        buffer = io.BytesIO()
        Image.fromarray(scene.image).resize((256, 256), Image.NEAREST).save(buffer, "PNG")
        images.append(buffer.getvalue())
    upload(url, images[0])  # warm-up
    print(f"{torch.get_num_threads()} CPU threads; {args.requests} requests per row, 256 x 256 PNGs, with attention")
    print(f"{'clients':>7} {'requests/s':>11} {'median latency (ms)':>20} {'95th percentile (ms)':>21}")
    for clients in (1, 8):
        latencies, lock = [], threading.Lock()

        def client(k):
            for i in range(k, args.requests, clients):
                start = time.perf_counter()
                upload(url, images[i % len(images)])
                with lock:
                    latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        elapsed = time.perf_counter() - start
        latencies.sort()
        print(f"{clients:7} {len(latencies) / elapsed:11.1f} {1000 * statistics.median(latencies):20.0f} "
              f"{1000 * latencies[int(0.95 * (len(latencies) - 1))]:21.0f}")
    server.should_exit = True


if __name__ == "__main__":
    main()
