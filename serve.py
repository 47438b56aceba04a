"""Serve the web page: caption your own photos and see, word by word, where the model looked.

    python serve.py runs/shapes/model                 # then open http://127.0.0.1:8000
    python serve.py runs/shapes/model --port 8080 --max-mb 10
    python serve.py MODEL --host 0.0.0.0              # reachable from other machines: only on a network you trust
    python serve.py MODEL --max-num 20 --seconds 60   # let one request ask for more

Works offline and on a CPU. MODEL is a model folder (config.json + model.safetensors) or a checkpoint.pt.
The API the page uses is documented at /docs. Every request is held to the limits below (a 400 names the
one it passed); small requests never wait behind a large one (server/limits.py). On any address the server
answers only to the names of this machine and the address it listens on (--allow-host adds one, e.g. behind
a proxy; on 0.0.0.0 any address in numbers too), and never to a POST from another site's page.
"""

import argparse
import sys
from pathlib import Path

from captioner.cli import add_device_flag, load_captioner
from captioner.flags import add_dataclass_flags
from server.limits import ServerLimits, few_memory_arenas


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (config.json + model.safetensors) or a checkpoint.pt")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--max-mb", type=float, default=5.0, help="largest image upload in megabytes (default: 5)")
    p.add_argument("--allow-host", action="append", default=[], metavar="NAME",
                   help="another name the Host header may carry (repeatable); localhost and --host always may")
    limits = add_dataclass_flags(p, ServerLimits, skip=("max_bytes",), title="limits on one request")
    p.add_argument("--threads", type=int, default=0,
                   help="PyTorch CPU threads for each of the two captioning lanes (default: half the cores, so a "
                        "large request in one lane leaves the other lane cores of its own)")
    add_device_flag(p)
    args = p.parse_args(argv)
    import torch
    import uvicorn  # imported here: --help works without the server's packages

    from server.app import create_app
    from server.connections import bounded_protocol

    captioner = load_captioner(args.model, args.device, dtype=args.dtype)
    path = Path(args.model).resolve()
    name = path.parent.name if path.name in ("model", "checkpoint.pt") else path.name  # runs/shapes/model: "shapes"
    given = {field: getattr(args, dest) for dest, field in limits.items() if getattr(args, dest) is not None}
    try:
        limits = ServerLimits(max_bytes=int(args.max_mb * 1e6), **given)
    except ValueError as e:
        sys.exit(f"error: {e}")
    torch.set_num_threads(args.threads or max(1, torch.get_num_threads() // 2))  # two lanes share the cores
    few_memory_arenas()  # memory freed by one request's thread serves the next (server/limits.py)
    app = create_app(captioner, limits, name=name, host=args.host, allow_hosts=args.allow_host)
    print(f"serving {args.model} at http://{args.host}:{args.port}  (the API: /docs; Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning",
                http=bounded_protocol(limits.max_connections, limits.read_timeout))  # server/connections.py


if __name__ == "__main__":
    main()
