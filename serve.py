"""Serve the web page: caption your own photos and see, word by word, where the model looked.

    python serve.py runs/shapes/model                 # then open http://127.0.0.1:8000
    python serve.py runs/shapes/model --port 8080 --max-mb 10
    python serve.py MODEL --host 0.0.0.0              # reachable from other machines: only on a network you trust

Works offline and on a CPU. MODEL is a model folder (config.json + model.safetensors) or a checkpoint.pt.
The API the page uses is documented at /docs.
"""

import argparse
import sys
from pathlib import Path

from captioner.api import Captioner
from model.checkpoint import CheckpointError, pick_device


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (config.json + model.safetensors) or a checkpoint.pt")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port to listen on (default: 8000)")
    p.add_argument("--max-mb", type=float, default=5.0, help="largest image upload in megabytes (default: 5)")
    p.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest image once decoded, in pixels; refuses decompression bombs (default: 40000000)")
    p.add_argument("--device", default="auto", help='"auto" (CUDA, else a Mac\'s MPS, else the CPU), "cpu", "cuda", "mps", ... (default: auto)')
    args = p.parse_args(argv)
    import uvicorn  # imported here: --help works without the server's packages

    from server.app import create_app

    try:
        captioner = Captioner.from_pretrained(args.model, pick_device(args.device), for_images=True)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    path = Path(args.model).resolve()
    name = path.parent.name if path.name in ("model", "checkpoint.pt") else path.name  # runs/shapes/model: "shapes"
    app = create_app(captioner, int(args.max_mb * 1e6), args.max_pixels, name=name)
    print(f"serving {args.model} at http://{args.host}:{args.port}  (the API: /docs; Ctrl+C stops)", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
