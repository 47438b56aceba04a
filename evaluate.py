"""Score captions against references, as the COCO caption evaluation does: BLEU, CIDEr-D and ROUGE-L in
Python; METEOR and SPICE with pycocoevalcap's Java code where Java is installed (skipped with one line
otherwise; --no-java leaves them out).

    python evaluate.py captions.json references.json [--split test] [--json scores.json]
    python evaluate.py --model runs/flickr30k/model --images flickr30k-images/ dataset_flickr30k.json --split test

captions: the JSON or CSV that generate.py writes (the first caption of each image is scored); or, with
--model and --images, the model captions the split's images itself (greedy unless --beam is given).
references: any caption file train.py reads (Karpathy or COCO JSON, results.csv, .token, captions.txt,
an imagefolder's metadata.csv or metadata.jsonl).
Images are matched by file name (with its subfolder, as in COCO's train2014/...), or by the number a
COCO results file names them by: [{"image_id": 42, "caption": ...}], as generate.py --coco-results writes.
"""

import argparse
import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

from captioner.cli import add_compile_flag, add_device_flag, load_captioner
from data.captions import image_id, image_path, read_captions
from data.images import load_images
from metrics import score_captions
from metrics.java import java_scores
from model.errors import CaptionerError


def read_generated(path):
    """{image (a file name, or a COCO image_id): caption} from generate.py's JSON or CSV output, or from the
    COCO results format other tools write: [{"image_id": 42, "caption": "..."}, ...]."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such captions file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            return {Path(r["image"]).name: r["caption"] for r in csv.DictReader(f) if r["caption_index"] == "0"}
    try:
        rows = json.loads(path.read_text())
        if rows and all("image_id" in r for r in rows):  # COCO results: the first caption of each image
            return {r["image_id"]: str(r["caption"]) for r in reversed(rows)}
        return {Path(r["image"]).name: r["captions"][0] for r in rows}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        raise SystemExit(f"error: {path}: neither the JSON generate.py writes ([{{\"image\", \"captions\"}}, ...]) "
                         "nor COCO results ([{\"image_id\", \"caption\"}, ...])") from None


def matched(generated, references):
    """generated, keyed by the references' own names: a name with its subfolder, or a COCO image_id."""
    by_file = {Path(n).name: n for n in references.captions}
    by_id = {image_id(n): n for n in references.captions}
    return {n if n in references.captions else by_file.get(str(n)) or by_id.get(n, n): c for n, c in generated.items()}


BATCH = 32  # images read and captioned at a time: a folder of thousands never sits in memory at once


def caption_with_model(args, names):
    """{image file name: caption} of the named images in --images, captioned by --model."""
    captioner = load_captioner(args.model, args.device, dtype=args.dtype, compile=args.compile)
    outside = [name for name in names if image_path(args.images, name) is None]
    for name in outside:
        print(f"skipped {name}: not a name inside {args.images}", file=sys.stderr)
    names = [name for name in names if name not in outside]
    captions = {}
    for start in tqdm(range(0, len(names), BATCH), desc="captioning", unit="batch", disable=len(names) <= BATCH):
        loaded, errors = load_images([image_path(args.images, name) for name in names[start : start + BATCH]])
        for error in errors:
            tqdm.write(f"skipped {error}", file=sys.stderr)
        texts = captioner.caption([picture for _, picture in loaded], beam=args.beam) if loaded else []
        captions |= {path.relative_to(args.images).as_posix(): caption for (path, _), caption in zip(loaded, texts)}
    return captions



def clip_scores_of(args, names, candidates, references):
    """CLIPScore and RefCLIPScore of the named images in --images (metrics/clipscore.py)."""
    from metrics.clipscore import clip_scores

    if not args.images:
        raise SystemExit("error: --clipscore needs --images FOLDER: it compares each caption with its image")
    name, _, weights = args.clipscore.partition(":")
    outside = [n for n in names if image_path(args.images, n) is None]
    if outside:
        raise SystemExit(f"error: --clipscore needs every scored image; {outside[0]}: not a name inside {args.images}")
    loaded, errors = load_images([image_path(args.images, n) for n in names])
    if errors:
        raise SystemExit(f"error: --clipscore needs every scored image; {errors[0]}")
    return clip_scores([picture for _, picture in loaded], candidates, references, name,
                       None if weights in ("", "none") else weights)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="[CAPTIONS] REFERENCES",
                   help="generated captions (unless --model) and the reference caption file")
    p.add_argument("--split", help="score only images of this split of the reference file")
    p.add_argument("--json", help="also write the scores to this file")
    p.add_argument("--model", help="caption the images with this model folder (or checkpoint.pt) instead")
    p.add_argument("--images", help="with --model or --clipscore: the folder of the images the references name")
    p.add_argument("--beam", type=int, default=1, help="with --model: beam size (default: 1, greedy)")
    add_device_flag(p, when="with --model: ")
    add_compile_flag(p, when="with --model: ")
    p.add_argument("--clipscore", nargs="?", const="ViT-B-32:openai", metavar="MODEL:WEIGHTS",
                   help="also CLIPScore and RefCLIPScore with an OpenCLIP model (default: ViT-B-32:openai, as the "
                        "metric's authors, downloaded on first use; :none is random, for tests); needs --images")
    p.add_argument("--java", action=argparse.BooleanOptionalAction, default=True,
                   help="METEOR and SPICE with pycocoevalcap's Java code, where Java and pycocoevalcap are "
                        "installed; each skipped with one line otherwise (default: on)")
    args = p.parse_args(argv)
    if len(args.files) != (1 if args.model else 2):
        p.error("give CAPTIONS REFERENCES, or --model MODEL --images FOLDER REFERENCES")
    if args.clipscore and not args.images:
        p.error("--clipscore needs --images FOLDER: it compares each caption with its image")
    if args.model and not args.images:
        p.error("--model needs --images FOLDER")
    generated = read_generated(args.files[0]) if not args.model else None
    try:
        references = read_captions(args.files[-1])
    except CaptionerError as e:
        raise SystemExit(f"error: {e}") from None
    if args.model:
        try:
            generated = caption_with_model(args, references.names(args.split))
        except CaptionerError as e:  # e.g. --compile without a C++ compiler: one line (model/errors.py)
            raise SystemExit(f"error: {e}") from None
    else:
        generated = matched(generated, references)
    names = [n for n in sorted(generated) if args.split is None or references.splits.get(n) == args.split]
    unknown = [n for n in names if n not in references.captions]
    if unknown:
        raise SystemExit(f"error: {len(unknown)} captioned images have no references in {args.files[-1]} "
                         f"(first: {', '.join(unknown[:5])})")
    if not names:
        raise SystemExit("error: no captioned image to score")
    candidates, refs = [generated[n] for n in names], [references.captions[n] for n in names]
    scores = score_captions(candidates, refs)
    if args.clipscore:
        scores |= clip_scores_of(args, names, candidates, refs)
    if args.java:
        java, skipped = java_scores(candidates, refs)
        scores |= java
        for line in skipped:
            print(line, file=sys.stderr)
    print(f"{len(names)} images")
    for metric, value in scores.items():
        print(f"{metric:10} {value:8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1))
    return scores


if __name__ == "__main__":
    main()
