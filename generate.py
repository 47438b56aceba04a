"""Caption images with a trained model; optionally draw where the model looked, or focus it on a region.

    python generate.py runs/shapes/model photo.jpg folder/ "more/*.png"
    python generate.py MODEL images/ --beam 3 --json captions.json --csv captions.csv
    python generate.py MODEL images/ --temperature 0.8 --top-p 0.9 --num 3
    python generate.py MODEL photo.jpg --attention pictures/      # one PNG per image: a heat map per word
    python generate.py MODEL photo.jpg --region 10,40,120,200     # caption only what is inside the box
    python generate.py MODEL photo.jpg --attention pictures/ --student-code all   # with your exercises' code

MODEL is a model folder (config.json + model.safetensors, as train.py writes into OUT/model), a
training checkpoint (OUT/checkpoint.pt), or a Hugging Face ViT + GPT-2 captioner's folder:
    python generate.py vit-gpt2-image-captioning/ photo.jpg --attention pictures/
    python generate.py nlpconnect/vit-gpt2-image-captioning photo.jpg --download
 An image that cannot be read is reported in one line; every
other image is still captioned, and the exit status is 1 at the end.
Captions are printed with their control characters shown as escapes (\x1b); a --csv cell that begins like a
spreadsheet formula (= + - @) gets a leading ', as spreadsheets mark text (captioner/untrusted.py); --json is exact.
"""

import argparse
import csv
import glob
import json
import sys
from pathlib import Path

from tqdm import tqdm

from captioner.cli import add_compile_flag, add_device_flag, load_captioner
from captioner.flags import add_dataclass_flags
from captioner.pictures import save_attention_picture
from captioner.untrusted import for_terminal, to_cell
from data.captions import image_id
from data.images import load_images
from model.errors import CaptionerError
from model.sampling import DecodingOptions

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a model folder (config.json + model.safetensors), a checkpoint.pt, or a Hugging "
                   "Face ViT + GPT-2 folder (nlpconnect/vit-gpt2-image-captioning's layout)")
    p.add_argument("--download", action="store_true", help="MODEL is a name on the Hugging Face hub: download it "
                   "first (needs internet and huggingface_hub)")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    decoding = add_dataclass_flags(p, DecodingOptions, title="decoding (the fields of model.sampling.DecodingOptions)")
    p.add_argument("--batch-size", type=int, default=32, help="images captioned together (default: 32)")
    p.add_argument("--json", help="write the captions to this JSON file")
    p.add_argument("--csv", help="write the captions to this CSV file")
    p.add_argument("--coco-results", metavar="FILE", help="write the first caption of each image in the COCO results "
                   "format, [{\"image_id\": 42, \"caption\": ...}], the id read from the file name")
    p.add_argument("--attention", metavar="DIR", help="write one attention picture per image into DIR")
    p.add_argument("--layer", default="mean", help="decoder layer for the pictures (0-based), or 'mean' (default: mean)")
    p.add_argument("--region", help="x0,y0,x1,y1 in pixels: caption only this box")
    p.add_argument("--region-mask", help="an image, white inside the region: caption only that")
    add_device_flag(p)
    add_compile_flag(p)
    p.add_argument("--student-code", default="", help='caption with exercises whose code you wrote, e.g. "attention,block" or "all" (exercises/README.md)')
    p.add_argument("--student-dir", default="my_exercises", help="the folder with your exercise files (default: my_exercises)")
    args = p.parse_args(argv)
    try:
        args.options = DecodingOptions(**{name: getattr(args, dest) for dest, name in decoding.items()
                                          if getattr(args, dest) is not None})
    except ValueError as e:
        p.error(str(e))
    if args.region and args.region_mask:
        p.error("give --region or --region-mask, not both")
    return args


def find_images(patterns):
    """Files as given; folders expanded to their image files; glob patterns expanded. Sorted, no repeats."""
    found = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        elif any(ch in pattern for ch in "*?["):
            found += sorted(Path(p) for p in glob.glob(pattern, recursive=True))
        else:
            found.append(path)  # a missing file is reported when it is read
    return list(dict.fromkeys(found))


def main(argv=None):
    args = parse_args(argv)
    if not args.student_code:
        return caption_images(args)
    from exercises import student_code, use_student_code

    with use_student_code(student_code(args.student_code, args.student_dir)):
        return caption_images(args)


def caption_images(args):
    captioner = load_captioner(args.model, args.device, args.download, args.dtype, args.compile)
    layer = None if args.layer == "mean" else int(args.layer)
    paths = find_images(args.images)
    if not paths:
        sys.exit("error: no images found in " + " ".join(args.images))

    results, failed = [], 0
    bar = tqdm(total=len(paths), desc="captioning", unit="img", disable=len(paths) <= args.batch_size)
    for start in range(0, len(paths), args.batch_size):
        loaded, errors = load_images(paths[start : start + args.batch_size])
        bar.update(len(loaded) + len(errors))
        for error in errors:
            tqdm.write(f"skipped {for_terminal(error)}", file=sys.stderr)
        failed += len(errors)
        if not loaded:
            continue
        for path, picture in loaded:
            picture.filename = path.name  # named in region messages
        try:
            captions = captioner.caption([picture for _, picture in loaded], region=args.region,
                                         region_mask=args.region_mask, attention=bool(args.attention),
                                         batch_size=args.batch_size, options=args.options)
        except CaptionerError as e:  # a region or an image the user can fix: one line (model/errors.py)
            sys.exit(f"error: {for_terminal(e)}")
        for (path, _), caption in zip(loaded, captions):
            texts = caption.texts if args.attention else (caption if isinstance(caption, list) else [caption])
            results.append({"image": str(path), "captions": texts})
            if args.attention:
                Path(args.attention).mkdir(parents=True, exist_ok=True)
                picture = save_attention_picture(caption, Path(args.attention) / f"{path.stem}.png", layer)
                results[-1]["attention"] = str(picture)

    bar.close()
    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.coco_results:  # what COCO's evaluation server and pycocoevalcap read
        coco = [{"image_id": image_id(r["image"]), "caption": r["captions"][0]} for r in results]
        Path(args.coco_results).write_text(json.dumps(coco))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption_index", "caption"])
            for r in results:
                for k, text in enumerate(r["captions"]):
                    writer.writerow([to_cell(r["image"]), k, to_cell(text)])  # never a formula (captioner/untrusted.py)
    if failed:
        print(f"{failed} of {len(paths)} images could not be read", file=sys.stderr)
        sys.exit(1)
    return results


def print_table(results):
    """Image names and captions, their control characters shown as escapes: a word is never a terminal command."""
    if not results:
        return
    width = min(40, max(len(for_terminal(Path(r["image"]).name)) for r in results))
    print(f"{'image':{width}}  caption")
    print(f"{'-' * width}  {'-' * 40}")
    for r in results:
        name = for_terminal(Path(r["image"]).name)
        for k, text in enumerate(r["captions"]):
            print(f"{(name if k == 0 else ''):{width}}  {for_terminal(text)}")


if __name__ == "__main__":
    main()
