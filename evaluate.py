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
A row whose image_id is not a whole number (or a file name), or whose caption is not a string, stops the command
with one line naming the file and the field; so does an image the references do not have.
"""

import argparse
import csv
import io
import json
import sys
from pathlib import Path

from tqdm import tqdm

from captioner.cli import add_compile_flag, add_device_flag, load_captioner
from captioner.untrusted import for_terminal, from_cell
from data.captions import csv_rows, decode_utf8, image_id, image_path, parse_json, read_captions
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
    try:  # text that is not UTF-8, a CSV field over csv's limit, JSON nested too deeply: one line (data/captions.py)
        text = decode_utf8(path, path.read_bytes())
        if path.suffix.lower() == ".csv":
            return csv_captions(path, text)
        rows = parse_json(path, text)
    except CaptionerError as e:
        raise SystemExit(f"error: {for_terminal(e)}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
        raise SystemExit(f"error: {path}: neither the JSON generate.py writes ([{{\"image\", \"captions\"}}, ...]) "
                         "nor COCO results ([{\"image_id\", \"caption\"}, ...])")
    if rows and all("image_id" in r for r in rows):  # COCO results: the first caption of each image
        return {field(path, i, r, "image_id", (int, str), "a whole number (or a file name)"): field(path, i, r, "caption", str, "a string")
                for i, r in reversed(list(enumerate(rows)))}
    return {Path(field(path, i, r, "image", str, "a string")).name: first_caption(path, i, r) for i, r in enumerate(rows)}


def field(path, i, row, name, kinds, what):
    """row[name] if it is one of `kinds`; otherwise one line naming the file and the field. JSON's true is not the
    number 1 here, and null, 12345 or a list are not a caption."""
    value = row.get(name)
    if isinstance(value, bool) or not isinstance(value, kinds):
        raise SystemExit(f"error: {path}: [{i}].{name} is {json.dumps(value)[:40]}, not {what}")
    return value


def first_caption(path, i, row):
    """The first of a generate.py row's captions, which must be a string."""
    captions = field(path, i, row, "captions", list, "a list of captions")
    if not captions or not isinstance(captions[0], str):
        raise SystemExit(f"error: {path}: [{i}].captions[0] is {json.dumps(captions[0])[:40]}, not a string"
                         if captions else f"error: {path}: [{i}].captions is empty")
    return captions[0]


CSV_COLUMNS = ("image", "caption_index", "caption")  # what generate.py --csv writes


def csv_captions(path, text):
    """{image file name: caption} of generate.py's CSV: its rows with caption_index 0, the cells read back as
    generate.py wrote them (captioner/untrusted.py)."""
    reader, captions = csv.DictReader(io.StringIO(text)), {}
    for row in csv_rows(path, reader):
        if any(row.get(column) is None for column in CSV_COLUMNS):  # a missing column, or a row cut short
            raise SystemExit(f"error: {path}, line {reader.line_num}: not a row of the CSV generate.py writes "
                             f"({','.join(CSV_COLUMNS)})")
        if row["caption_index"] == "0":
            captions[Path(from_cell(row["image"])).name] = from_cell(row["caption"])
    return captions


def matched(generated, references):
    """generated, keyed by the references' own names: a name with its subfolder, or a COCO image_id."""
    by_file = {Path(n).name: n for n in references.captions}
    by_id = {image_id(n): n for n in references.captions}
    return {n if n in references.captions else by_file.get(str(n)) or by_id.get(n) or unmatched(n): c
            for n, c in generated.items()}


def unmatched(key):
    """A key no reference has, as a name that sorts with the others: "image_id 999" for a COCO number."""
    return f"image_id {key}" if isinstance(key, int) else key


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
        raise SystemExit(f"error: {for_terminal(e)}") from None  # it may quote the file: its names, its captions
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
                         f"(first: {for_terminal(', '.join(unknown[:5]))})")
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
