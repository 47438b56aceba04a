"""Caption images with a trained checkpoint; optionally draw where the model looked, or focus it on a region.

    python generate.py runs/shapes/checkpoint.pt photo.jpg folder/ "more/*.png"
    python generate.py CKPT images/ --beam 3 --json captions.json --csv captions.csv
    python generate.py CKPT images/ --temperature 0.8 --top-p 0.9 --num 3
    python generate.py CKPT photo.jpg --attention pictures/      # one PNG per image: a heat map per word
    python generate.py CKPT photo.jpg --region 10,40,120,200     # caption only what is inside the box

An image that cannot be read is reported in one line; every other image is still captioned, and the
exit status is 1 at the end.
"""

import argparse
import csv
import glob
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.images import ImageError, image_transform, load_image, patch_boxes
from data.tokenizer import tokenizer_from_dict
from model.checkpoint import CheckpointError, load_captioner, pick_device
from model.sampling import beam_search, generate

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoint", help="a checkpoint written by train.py")
    p.add_argument("images", nargs="+", help="image files, folders or glob patterns")
    p.add_argument("--beam", type=int, default=1, help="beam size; 1 with temperature 0 is greedy")
    p.add_argument("--length-penalty", type=float, default=1.0, help="beam score = log p / length ** this")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sample")
    p.add_argument("--top-k", type=int, default=None, help="sample among the k most likely tokens")
    p.add_argument("--top-p", type=float, default=None, help="sample in the smallest set with probability >= p")
    p.add_argument("--num", type=int, default=1, help="captions per image (needs sampling)")
    p.add_argument("--max-len", type=int, default=None, help="most tokens a caption may have")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--json", help="write the captions to this JSON file")
    p.add_argument("--csv", help="write the captions to this CSV file")
    p.add_argument("--attention", metavar="DIR", help="write one attention picture per image into DIR")
    p.add_argument("--layer", default="mean", help="decoder layer for the pictures (0-based), or 'mean'")
    p.add_argument("--region", help="x0,y0,x1,y1 in pixels: caption only this box")
    p.add_argument("--region-mask", help="an image, white inside the region: caption only that")
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    if args.num > 1 and args.temperature == 0:
        p.error("--num > 1 needs sampling: add --temperature (e.g. 0.8)")
    if args.beam > 1 and args.temperature > 0:
        p.error("choose either beam search (--beam) or sampling (--temperature), not both")
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


# ----------------------------------------------------------------------------------------------
# Regions: which patches lie inside, and the crop that makes the prefix.


class RegionError(ValueError):
    pass


def parse_region(text, width, height, name):
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError:
        raise RegionError(f"--region {text!r}: expected four numbers x0,y0,x1,y1") from None
    if x1 <= x0 or y1 <= y0:
        raise RegionError(f"--region {text}: empty box (x1 must exceed x0 and y1 exceed y0)")
    if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
        raise RegionError(f"--region {text} lies outside {name} ({width}x{height})")
    return max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)


def region_from_mask(path, width, height, name):
    mask = np.asarray(load_image(path).convert("L").resize((width, height))) > 127  # (H, W)
    if not mask.any():
        raise RegionError(f"--region-mask {path}: no white pixel, the region is empty")
    ys, xs = np.nonzero(mask)
    return (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)), mask


def region_patch_mask(spec, width, height, grid, box, mask=None):
    """(grid*grid,) True for the patches that overlap the region."""
    boxes = patch_boxes(spec, width, height, grid)  # (N, 4) in original pixels
    x0, y0, x1, y1 = box
    overlap = (boxes[:, 0] < x1) & (boxes[:, 2] > x0) & (boxes[:, 1] < y1) & (boxes[:, 3] > y0)
    if mask is not None:  # keep patches that contain at least one masked pixel
        for i in torch.nonzero(overlap).flatten().tolist():
            bx0, by0, bx1, by1 = (int(round(float(v))) for v in boxes[i])
            overlap[i] = bool(mask[max(0, by0):max(0, by1), max(0, bx0):max(0, bx1)].any())
    if not overlap.any():
        raise RegionError(f"region {box} covers no patch of the model's view of the image")
    return overlap


# ----------------------------------------------------------------------------------------------
# Captioning


@dataclass
class Item:
    path: Path
    pixels: torch.Tensor  # (3, S, S) model input
    crop: torch.Tensor = None  # (3, S, S) the region's crop, for the prefix
    patch_mask: torch.Tensor = None  # (N,) patches inside the region


def prepare(path, transform, spec, grid, args):
    image = load_image(path)
    item = Item(path, transform(image))
    if args.region or args.region_mask:
        W, H = image.size
        if args.region:
            box, mask = parse_region(args.region, W, H, path.name), None
        else:
            box, mask = region_from_mask(args.region_mask, W, H, path.name)
        item.patch_mask = region_patch_mask(spec, W, H, grid, box, mask)
        item.crop = transform(image.crop(tuple(round(v) for v in box)))
    return item


@torch.no_grad()
def caption_batch(model, tokenizer, items, args, device, generator):
    """Captions (a list of `num` strings per item) and the token ids of the first caption of each."""
    clip_embed, patches = model.encode(torch.stack([it.pixels for it in items]).to(device))
    patch_mask = None
    if items[0].crop is not None:
        clip_embed, _ = model.encode(torch.stack([it.crop for it in items]).to(device))  # prefix from the crop
        patch_mask = torch.stack([it.patch_mask for it in items]).to(device)  # (B, N)
    common = dict(bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id, max_new_tokens=args.max_len)
    if args.beam > 1:
        tokens, _ = beam_search(model.decoder, clip_embed, patches, beam_size=args.beam,
                                length_penalty=args.length_penalty, patch_mask=patch_mask, **common)
        runs = [tokens]
    else:
        runs = [generate(model.decoder, clip_embed, patches, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, generator=generator, patch_mask=patch_mask, **common)
                for _ in range(args.num)]
    captions = [[tokenizer.decode(run[b].tolist()) for run in runs] for b in range(len(items))]
    return captions, runs[0]


# ----------------------------------------------------------------------------------------------
# Attention pictures


@torch.no_grad()
def word_attention(model, tokenizer, item, ids, layer, device, encoded=None):
    """Cross-attention over the patches for each generated word: (words, maps (n, N)), heads averaged.

    encoded: the encoder's output for item.pixels, if the caller already has it.
    """
    ids = ids.tolist()
    n = ids.index(tokenizer.eos_id) if tokenizer.eos_id in ids else len(ids)
    words = [tokenizer.decode([i]) for i in ids[:n]]
    encoded = encoded if encoded is not None else model.encoder(item.pixels[None].to(device))
    clip_embed, patches = encoded.pooled, encoded.patches
    if item.crop is not None:
        clip_embed, _ = model.encode(item.crop[None].to(device))  # the prefix came from the region's crop
    tokens = torch.tensor([[tokenizer.bos_id] + ids[:n]], device=device)  # (1, n + 1)
    mask = item.patch_mask[None].to(device) if item.patch_mask is not None else None
    out = model.decoder(tokens, clip_embed, patches, patch_mask=mask, return_attn=True)
    if out.cross_attn[0] is None:
        return words, None  # pure ClipCap: no cross-attention to draw
    maps = torch.stack(out.cross_attn)[:, 0].mean(dim=1)  # (layers, L, N), mean over heads
    maps = maps.mean(dim=0) if layer == "mean" else maps[int(layer)]  # (L, N)
    P = model.decoder.config.prefix_len
    return words, maps[P : P + n].cpu()  # row P + i is the query that produced word i


def save_attention_picture(model, tokenizer, item, ids, folder, layer, device, spec):
    """One PNG: the model's view of the image, the encoder's attention rollout, then one heat map per word.

    spec: the checkpoint's preprocessing, whose mean and std undo the normalisation for display.
    """
    from matplotlib.figure import Figure  # no pyplot: leaves a notebook's plotting backend alone

    from model.rollout import attention_rollout

    folder.mkdir(parents=True, exist_ok=True)
    grid = model.encoder.config.grid
    with torch.no_grad():
        encoded = model.encoder(item.pixels[None].to(device), return_attn=True)
    words, maps = word_attention(model, tokenizer, item, ids, layer, device, encoded)
    rollout = attention_rollout(encoded.attn)[0].cpu()
    view = item.pixels * torch.tensor(spec["std"]).view(3, 1, 1) + torch.tensor(spec["mean"]).view(3, 1, 1)
    view = view.clamp(0, 1).permute(1, 2, 0).numpy()  # (S, S, 3), what the model saw
    panels = [("image", None), ("encoder rollout", rollout)]
    panels += [(w, maps[i]) for i, w in enumerate(words)] if maps is not None else []
    cols = min(6, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (title, heat) in zip(axes.flat, panels):
        ax.imshow(view)
        if heat is not None:
            ax.imshow(heat.view(grid, grid).numpy(), cmap="inferno", alpha=0.6, interpolation="bilinear",
                      extent=(0, view.shape[1], view.shape[0], 0))
        ax.set_title(title, fontsize=11)
    fig.suptitle(tokenizer.decode(ids.tolist()), fontsize=12)
    fig.tight_layout()
    out = folder / f"{item.path.stem}.png"
    fig.savefig(out, dpi=90)
    return out


def main(argv=None):
    args = parse_args(argv)
    device = pick_device(args.device)
    try:
        model, state = load_captioner(args.checkpoint, device)
    except CheckpointError as e:
        sys.exit(f"error: {e}")
    if model.encoder is None:
        sys.exit(f"error: {args.checkpoint} has no image encoder, so it cannot caption image files")
    tokenizer = tokenizer_from_dict(state["tokenizer"])
    spec = state["preprocess"]
    transform = image_transform(spec)
    grid = model.encoder.config.grid
    generator = torch.Generator(device=device).manual_seed(args.seed)
    paths = find_images(args.images)
    if not paths:
        sys.exit("error: no images found in " + " ".join(args.images))

    results, failed = [], 0
    for start in range(0, len(paths), args.batch_size):
        items = []
        for path in paths[start : start + args.batch_size]:
            try:
                items.append(prepare(path, transform, spec, grid, args))
            except ImageError as e:
                print(f"skipped {e}", file=sys.stderr)
                failed += 1
            except RegionError as e:
                sys.exit(f"error: {e}")
        if not items:
            continue
        captions, tokens = caption_batch(model, tokenizer, items, args, device, generator)
        for item, texts, ids in zip(items, captions, tokens):
            results.append({"image": str(item.path), "captions": texts})
            if args.attention:
                out = save_attention_picture(model, tokenizer, item, ids, Path(args.attention), args.layer, device,
                                             spec)
                results[-1]["attention"] = str(out)

    print_table(results)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    if args.csv:
        with open(args.csv, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["image", "caption_index", "caption"])
            for r in results:
                for k, text in enumerate(r["captions"]):
                    writer.writerow([r["image"], k, text])
    if failed:
        print(f"{failed} of {len(paths)} images could not be read", file=sys.stderr)
        sys.exit(1)
    return results


def print_table(results):
    if not results:
        return
    width = min(40, max(len(Path(r["image"]).name) for r in results))
    print(f"{'image':{width}}  caption")
    print(f"{'-' * width}  {'-' * 40}")
    for r in results:
        name = Path(r["image"]).name
        for k, text in enumerate(r["captions"]):
            print(f"{(name if k == 0 else ''):{width}}  {text}")


if __name__ == "__main__":
    main()
