"""CLIP features computed once, kept on disk in fp16, read back memory-mapped.

The cache folder is named by a key: a hash of the encoder's name, its weights (the bytes of its
state_dict) and its preprocessing. A changed encoder gets a new folder, so stale features are never
reused. Each row's status is written after its features, so an interrupted extraction resumes where
it stopped, and a corrupt image is marked failed, reported by name and skipped.
"""

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from data.images import ImageError, load_image

PENDING, DONE, FAILED = 0, 1, 2


def weights_digest(module):
    """SHA-256 of every tensor of the module's state_dict, in order: the identity of its weights."""
    h = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(encoder_name, weights, preprocess):
    """A short hash naming the cache folder: encoder name, weights digest, preprocessing description."""
    description = json.dumps({"encoder": encoder_name, "weights": weights, "preprocess": repr(preprocess)})
    return hashlib.sha256(description.encode()).hexdigest()[:16]


class ImageFolderDataset(torch.utils.data.Dataset):
    """Decode and preprocess images for extraction; a bad image gives an error message instead of a tensor."""

    def __init__(self, paths, preprocess):
        self.paths, self.preprocess = paths, preprocess

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return i, self.preprocess(load_image(self.paths[i])), ""
        except ImageError as e:
            return i, None, str(e)


def collate(items):
    ok = [(i, x) for i, x, error in items if x is not None]
    failed = [(i, error) for i, x, error in items if x is None]
    indices = torch.tensor([i for i, _ in ok], dtype=torch.long)
    images = torch.stack([x for _, x in ok]) if ok else None
    return indices, images, failed


def create_feature_cache(folder, names, pooled_dim, patch_tokens, patch_dim, meta):
    """Lay out an empty cache for `names`: pooled.npy (n, E) and patches.npy (n, N, C) in fp16, status.npy (n,)
    all PENDING, names.json, and meta.json (`meta` plus the shapes) written last, so that a folder with a
    meta.json always has every file. Rows are filled in and marked DONE or FAILED afterwards."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = len(names)
    np.lib.format.open_memmap(folder / "pooled.npy", "w+", np.float16, (n, pooled_dim)).flush()
    np.lib.format.open_memmap(folder / "patches.npy", "w+", np.float16, (n, patch_tokens, patch_dim)).flush()
    np.save(folder / "status.npy", np.zeros(n, np.uint8))
    (folder / "names.json").write_text(json.dumps(list(names)))
    meta = dict(meta, pooled_dim=pooled_dim, patch_tokens=patch_tokens, patch_dim=patch_dim)
    (folder / "meta.json").write_text(json.dumps(meta, indent=1))


class FeatureCache:
    """A cache folder (see create_feature_cache), memory-mapped for reading."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.names = json.loads((self.folder / "names.json").read_text())
        self.meta = json.loads((self.folder / "meta.json").read_text())
        self.pooled = np.load(self.folder / "pooled.npy", mmap_mode="r")
        self.patches = np.load(self.folder / "patches.npy", mmap_mode="r")
        self.status = np.load(self.folder / "status.npy", mmap_mode="r")
        self.index = {name: i for i, name in enumerate(self.names)}

    def usable(self):
        """Names of the images whose features were extracted."""
        return [n for n, s in zip(self.names, self.status) if s == DONE]

    def get(self, rows, device="cpu"):
        """Features of cache rows `rows` as float32 tensors: (B, E), (B, N, C)."""
        rows = np.asarray(rows)
        pooled = torch.from_numpy(self.pooled[rows].astype(np.float32))
        patches = torch.from_numpy(self.patches[rows].astype(np.float32))
        return pooled.to(device), patches.to(device)


@torch.no_grad()
def extract_features(encoder, preprocess, encoder_name, folder, names, cache_root, batch_size=64, num_workers=2,
                     device="cpu", share=(0, 1), wait_for_all=lambda: None):
    """Compute features of every image in `names` (files in `folder`) into cache_root/<key>, resuming
    an earlier run with the same key. Returns the FeatureCache.

    share=(rank, processes): under torchrun every process calls this with its rank; process 0 lays out
    the cache, and each process computes one contiguous part of the rows still to do, writing straight
    into the shared memory-mapped files (one machine: its page cache keeps them consistent).
    wait_for_all is a barrier between the processes (torch.distributed.barrier); all return the same cache.
    """
    rank, processes = share
    names = sorted(names)
    out = lay_out_cache(encoder, preprocess, encoder_name, folder, names, cache_root, device, rank)
    wait_for_all()  # the layout exists before any process opens it
    pooled = np.load(out / "pooled.npy", mmap_mode="r+")
    patches = np.load(out / "patches.npy", mmap_mode="r+")
    status = np.load(out / "status.npy", mmap_mode="r+")
    pending = np.flatnonzero(status == PENDING)  # cache rows still to compute
    todo = np.array_split(pending, processes)[rank]  # this process's part of them
    wait_for_all()  # every process has read the same rows as pending before any marks one done
    paths = [Path(folder) / names[i] for i in todo]
    loader = torch.utils.data.DataLoader(ImageFolderDataset(paths, preprocess), batch_size=batch_size,
                                         num_workers=num_workers, collate_fn=collate)
    failed = int((status == FAILED).sum())
    done_before = len(names) - len(pending)
    bar = tqdm(total=done_before + len(todo), initial=done_before, unit="img", disable=rank != 0,
               desc="features" + (f" (process 0's part of {processes})" if processes > 1 else ""))
    for local, images, bad in loader:
        rows = todo[local.numpy()]  # loader indices -> cache rows
        if images is not None:
            features = encoder(images.to(device))
            pooled[rows] = features.pooled.cpu().numpy().astype(np.float16)
            patches[rows] = features.patches.cpu().numpy().astype(np.float16)
            pooled.flush()
            patches.flush()
            status[rows] = DONE  # only after the features themselves are on disk
        for i, error in bad:
            status[todo[i]] = FAILED
            failed += 1
            tqdm.write(f"skipped {error}")
        status.flush()
        bar.update(len(local) + len(bad))
        bar.set_postfix(failed=failed)
    bar.close()
    wait_for_all()  # every part is written
    cache = FeatureCache(out)
    failed = int((cache.status == FAILED).sum())
    if failed and rank == 0:
        print(f"{failed} of {len(names)} images could not be read and were skipped")
    return cache


def lay_out_cache(encoder, preprocess, encoder_name, folder, names, cache_root, device, rank):
    """The cache folder for this encoder, weights and preprocessing: created by process 0 with every row
    pending (its feature shapes probed on the first readable image), or an earlier one for the same images."""
    digest = weights_digest(encoder)
    out = Path(cache_root) / cache_key(encoder_name, digest, preprocess)
    if (out / "meta.json").exists():
        if json.loads((out / "names.json").read_text()) != names:
            raise ValueError(f"{out}: this cache holds features of a different image list; delete it or use "
                             "another cache folder")
    elif rank == 0:
        probe = encoder(preprocess(load_probe_image(folder, names)).unsqueeze(0).to(device))
        E, (N, C) = probe.pooled.shape[-1], probe.patches.shape[-2:]
        create_feature_cache(out, names, E, N, C, {"encoder": encoder_name, "weights_sha256": digest,
                                                   "preprocess": repr(preprocess), "image_folder": str(folder)})
    return out


def load_probe_image(folder, names):
    """The first readable image, to learn the feature shapes."""
    for name in names:
        try:
            return load_image(Path(folder) / name)
        except ImageError:
            continue
    raise ImageError(f"{folder}: none of the {len(names)} images can be read")
