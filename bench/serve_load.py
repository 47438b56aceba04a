"""Requests per second and latency of the web page's API, at 1 and 8 clients at once; with --hostile, what
an attacker's requests cost everyone else.

    python -m bench.serve_load runs/shapes/model [--requests 64]
    python -m bench.serve_load runs/shapes/model --hostile

Starts the app of serve.py under uvicorn on a free port of 127.0.0.1 in this process, then each client
(a thread) posts built-in scenes to /api/caption, with attention maps, as the page does; bounded in
count, loopback only. --hostile measures, side by side in one run: the latency of a normal request while
the largest allowed one runs, with one queue for every request (as before the lanes) and with the two
lanes; and the peak memory of a server process while 16 clients upload a 6300 x 6300 PNG at once, with
image decoding bounded to 2 at a time and unbounded, each in a fresh process (Linux: /proc/self/status).
"""

import argparse
import io
import json
import socket
import statistics
import sys
import threading
import time
import urllib.request
import uuid

import torch
from PIL import Image

from captioner.api import Captioner
from data.shapes import make_split
from server.app import create_app
from server.limits import ServerLimits, few_memory_arenas


def upload(url, data, **fields):
    boundary = uuid.uuid4().hex
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n"
                   for k, v in fields.items()).encode()
    body += (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"scene.png\"\r\n"
             f"Content-Type: image/png\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(url, body, {"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def start(app):
    """Serve `app` under uvicorn on a free port of 127.0.0.1: (the caption URL, the server to stop)."""
    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/api/caption", server


def memory(field):
    """This process's VmRSS (now) or VmHWM (peak) in GB."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1e6


def latency_beside_a_large_request(captioner, scene, large):
    """Median latency of 5 normal requests sent while the largest allowed one (num=large) runs, and its time."""
    rows = []
    for way, limits in [("one queue for all (as before)", ServerLimits(max_num=large, large=10**9)),
                        ("two lanes (today)", ServerLimits(max_num=large))]:
        url, server = start(create_app(captioner, limits))
        upload(url, scene)  # warm-up
        big = {}

        def ask_large():
            t = time.perf_counter()
            upload(url, scene, num=large, temperature=1.0)
            big["seconds"] = time.perf_counter() - t

        thread = threading.Thread(target=ask_large)
        thread.start()
        time.sleep(0.3)
        latencies = []
        for _ in range(5):
            t = time.perf_counter()
            upload(url, scene)
            latencies.append(time.perf_counter() - t)
            if not thread.is_alive():
                break
        thread.join()
        rows.append((way, statistics.median(latencies), big["seconds"]))
        server.should_exit = True
    return rows


def memory_under_large_uploads(captioner, decodes, clients=16):
    """Peak and remaining memory of this process while `clients` upload a 6300 x 6300 PNG at once, with
    at most `decodes` images decoded at a time. Run in a fresh process per setting (see memory_rows): memory
    a process once took stays with it, so a second setting measured in the same process reads low."""
    buffer = io.BytesIO()
    Image.new("RGB", (6300, 6300), (90, 140, 200)).save(buffer, "PNG")
    png = buffer.getvalue()
    url, server = start(create_app(captioner, ServerLimits(image_decodes=decodes)))
    upload(url, png, attention="false")  # warm-up: one large upload alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM, the peak
    before = memory("VmRSS")
    t = time.perf_counter()
    threads = [threading.Thread(target=upload, args=(url, png), kwargs={"attention": "false"}) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    server.should_exit = True
    return dict(peak=memory("VmHWM") - before, kept=memory("VmRSS") - before, seconds=time.perf_counter() - t,
                size=len(png))


def memory_rows(model, clients=16):
    """memory_under_large_uploads for bounded and unbounded decoding, each in a process of its own, twice,
    alternating."""
    import subprocess

    rows = []
    for way, decodes, arenas in [("bounded, 2 malloc arenas (serve.py)", 2, True),
                                 ("bounded, glibc's default arenas", 2, False),
                                 ("unbounded (16 at once), default arenas", clients, False)] * 2:
        command = [sys.executable, "-m", "bench.serve_load", model, "--memory", str(decodes)] + ["--arenas"] * arenas
        out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        rows.append((way, json.loads(out.splitlines()[-1])))
    return rows


def hostile(captioner, model):
    scene = io.BytesIO()
    Image.fromarray(make_split("test", 1, 32)[0].image).resize((256, 256), Image.NEAREST).save(scene, "PNG")
    print(f"{torch.get_num_threads()} CPU threads")
    for large in (8, 600):
        print(f"\nlatency of a normal request while one asks for num={large} (sampling)")
        for way, median, big in latency_beside_a_large_request(captioner, scene.getvalue(), large):
            print(f"  {way:32} normal: {1000 * median:6.0f} ms   the large one: {big:.2f} s")
    print("\n16 clients at once upload a 6300 x 6300 PNG")
    for way, m in memory_rows(model):
        print(f"  image decoding {way:40} peak {m['peak']:+.2f} GB, kept {m['kept']:+.2f} GB, {m['seconds']:.1f} s "
              f"({m['size'] / 1e3:.0f} kB each; a process of its own)")


def throughput(url, images, requests, clients):
    """(requests/s, median latency, 95th percentile latency) with `clients` posting at once."""
    latencies, lock = [], threading.Lock()

    def client(k):
        for i in range(k, requests, clients):
            t = time.perf_counter()
            upload(url, images[i % len(images)])
            with lock:
                latencies.append(time.perf_counter() - t)

    began = time.perf_counter()
    workers = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - began
    latencies.sort()
    return len(latencies) / elapsed, statistics.median(latencies), latencies[int(0.95 * (len(latencies) - 1))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model", help="a model folder or checkpoint.pt")
    p.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    p.add_argument("--hostile", action="store_true", help="measure what large requests cost the others")
    p.add_argument("--memory", type=int, metavar="DECODES", help=argparse.SUPPRESS)  # one memory row (a child)
    p.add_argument("--arenas", action="store_true", help=argparse.SUPPRESS)  # ... with serve.py's malloc setting
    args = p.parse_args()
    captioner = Captioner.from_pretrained(args.model)
    cores = torch.get_num_threads()
    if args.hostile or args.memory:
        torch.set_num_threads(max(1, cores // 2))  # as serve.py does
    if args.memory:
        if args.arenas:
            few_memory_arenas()  # as serve.py does
        return print(json.dumps(memory_under_large_uploads(captioner, args.memory)))
    if args.hostile:
        return hostile(captioner, args.model)
    images = []
    for scene in make_split("test", 16, 32):
        buffer = io.BytesIO()
        Image.fromarray(scene.image).resize((256, 256), Image.NEAREST).save(buffer, "PNG")
        images.append(buffer.getvalue())
    print(f"{args.requests} requests per row, 256 x 256 PNGs, with attention")
    print(f"{'threads':>7} {'clients':>7} {'requests/s':>11} {'median latency (ms)':>20} {'95th percentile (ms)':>21}")
    url, server = start(create_app(captioner))
    for threads in sorted({cores, max(1, cores // 2)}, reverse=True):  # as before; serve.py's default
        torch.set_num_threads(threads)
        upload(url, images[0])  # warm-up
        for clients in (1, 8):
            rate, median, p95 = throughput(url, images, args.requests, clients)
            print(f"{threads:7} {clients:7} {rate:11.1f} {1000 * median:20.0f} {1000 * p95:21.0f}")
    server.should_exit = True


if __name__ == "__main__":
    main()
