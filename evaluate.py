"""Score generated captions against references, as the COCO caption evaluation does, without Java.

    python evaluate.py captions.json references.json [--split test] [--json scores.json]

captions: the JSON or CSV that generate.py writes (the first caption of each image is scored).
references: any caption file train.py reads (Karpathy or COCO JSON, results.csv, .token, captions.txt).
Images are matched by file name.
"""

import argparse
import csv
import json
from pathlib import Path

from data.captions import CaptionFileError, read_captions
from metrics import score_captions


def read_generated(path):
    """{image file name: caption} from generate.py's JSON or CSV output."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: {path}: no such captions file")
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as f:
            return {Path(r["image"]).name: r["caption"] for r in csv.DictReader(f) if r["caption_index"] == "0"}
    try:
        return {Path(r["image"]).name: r["captions"][0] for r in json.loads(path.read_text())}
    except (json.JSONDecodeError, KeyError, TypeError, IndexError):
        raise SystemExit(f"error: {path}: not the JSON generate.py writes ([{{\"image\", \"captions\"}}, ...])") from None


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captions")
    p.add_argument("references")
    p.add_argument("--split", help="score only images of this split of the reference file")
    p.add_argument("--json", help="also write the scores to this file")
    args = p.parse_args(argv)
    generated = read_generated(args.captions)
    try:
        references = read_captions(args.references)
    except CaptionFileError as e:
        raise SystemExit(f"error: {e}") from None
    names = [n for n in sorted(generated) if args.split is None or references.splits.get(n) == args.split]
    unknown = [n for n in names if n not in references.captions]
    if unknown:
        raise SystemExit(f"error: {len(unknown)} captioned images have no references in {args.references} "
                         f"(first: {', '.join(unknown[:5])})")
    if not names:
        raise SystemExit("error: no captioned image to score")
    scores = score_captions([generated[n] for n in names], [references.captions[n] for n in names])
    print(f"{len(names)} images")
    for metric, value in scores.items():
        print(f"{metric:10} {value:8.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(scores, indent=1))
    return scores


if __name__ == "__main__":
    main()
