"""Turn a training checkpoint (checkpoint.pt) into a model folder (config.json + model.safetensors):

    python -m captioner.convert runs/shapes/checkpoint.pt runs/shapes/model

The checkpoint is read with torch.load(weights_only=True), which runs no code. Checkpoints written
before that rule may hold other pickled objects and are refused; `--trust-pickle` reads them the old
way, which runs whatever code the file carries: use it only on a file you made yourself.
"""

import argparse
import sys

import torch

from captioner.api import Captioner
from model.checkpoint import CheckpointError, model_from_state


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint.pt written by train.py")
    p.add_argument("folder", help="the model folder to write")
    p.add_argument("--trust-pickle", action="store_true",
                   help="read an old checkpoint with full unpickling, which can run code it carries: only for "
                        "a file you made yourself")
    args = p.parse_args(argv)
    try:
        if args.trust_pickle:
            print(f"reading {args.checkpoint} with full unpickling, as you asked (--trust-pickle)", file=sys.stderr)
            state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
            model = model_from_state(state["model_config"], state["model"], args.checkpoint, args.checkpoint)
            captioner = Captioner.from_model(model, state, args.checkpoint)
        else:
            captioner = Captioner.from_pretrained(args.checkpoint)
    except CheckpointError as e:
        hint = " (or add --trust-pickle if you made this file yourself)" if "refused" in str(e) else ""
        sys.exit(f"error: {e}{hint}")
    except (KeyError, TypeError, AttributeError) as e:
        sys.exit(f"error: {args.checkpoint}: not a captioner checkpoint ({e!r})")
    captioner.save_pretrained(args.folder)
    print(f"wrote {args.folder}/config.json and {args.folder}/model.safetensors")


if __name__ == "__main__":
    main()
