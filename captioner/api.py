"""The Python API, and the one captioning path: generate.py, train.py's validation captions, the
notebooks and the web page all caption through `Captioner`.

    from captioner import Captioner
    captioner = Captioner.from_pretrained("runs/shapes/model")      # a model folder (or a checkpoint.pt)
    captioner.caption("photo.jpg", beam=3)                           # -> "a large red square above a small ..."
    captioner.caption([image, "b.png"], temperature=0.8, num=3)      # PIL images or paths; a list per image
    result = captioner.caption(image, attention=True)                # words, attention maps per word, rollout
    captioner.caption(image, region=(10, 40, 120, 200))              # only what is inside the box
    Captioner.from_pretrained("vit-gpt2-image-captioning/")           # a Hugging Face ViT + GPT-2 folder
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from data.images import image_transform, load_image, to_rgb
from data.regions import RegionError, fit_box, mask_region, parse_box, region_patch_mask
from data.tokenizer import tokenizer_from_dict
from model.checkpoint import CheckpointError, load_model, save_model_folder
from model.files import read_json
from model.rollout import attention_rollout
from model.sampling import DecodingOptions


def is_hugging_face_folder(path):
    """A folder whose config.json names a Hugging Face model_type (ours holds "model" and "tokenizer")."""
    try:
        return path.is_dir() and "model_type" in read_json(path / "config.json")
    except (OSError, ValueError, TypeError):  # no config.json, not JSON, or JSON of another shape
        return False


def hugging_face_preprocess(folder, image_size):
    """preprocessor_config.json of a ViT (ViTImageProcessor) -> our preprocessing spec: squash to the
    model's size with bilinear resampling, then the processor's mean and std."""
    path = folder / "preprocessor_config.json"
    if not path.exists():
        raise ValueError(f"{path} does not exist: it says how images are resized and normalised")
    p = read_json(path, ValueError)
    try:
        size = p.get("size", image_size)
        size = size.get("height", image_size) if isinstance(size, dict) else size
        if size != image_size or p.get("resample", 2) != 2 or p.get("do_center_crop", False):
            raise ValueError(f"{path}: only a bilinear resize to the encoder's {image_size} x {image_size} is "
                             "supported")
        return {"kind": "squash", "image_size": image_size, "resample": "bilinear",
                "mean": list(p.get("image_mean", [0.5] * 3)), "std": list(p.get("image_std", [0.5] * 3))}
    except AttributeError as e:  # a field of the wrong kind
        raise ValueError(f"{path}: malformed ({e})") from None


def hub_download(name):
    """Fetch a model folder from the Hugging Face hub (only when the user asked) -> its local path. The
    weights come as model.safetensors where the repository has it, else as pytorch_model.bin (read
    weights-only); never both, and never its TensorFlow or Flax copies."""
    try:
        from huggingface_hub import list_repo_files, snapshot_download
    except ImportError:
        raise CheckpointError(f"{name}: downloading needs `pip install huggingface_hub`") from None
    try:
        files = list_repo_files(name)
        weights = "*.safetensors" if any(f.endswith(".safetensors") for f in files) else "pytorch_model.bin"
        return Path(snapshot_download(name, allow_patterns=["*.json", "*.txt", weights]))
    except Exception as e:  # noqa: BLE001 - no internet, no such repository, ...
        raise CheckpointError(f"{name}: could not be downloaded from the Hugging Face hub ({e})") from None


@dataclass
class Caption:
    """One image's captions, with where the model looked while writing the first one."""

    texts: list  # the captions; more than one with num > 1
    words: list  # the words of the first caption
    cross_attention: torch.Tensor  # (layers, H, words, grid, grid): each word's attention over the patches
    rollout: torch.Tensor  # (grid, grid) the encoder's attention rollout into the class token
    view: np.ndarray  # (S, S, 3) in [0, 1]: the image as the model saw it (resized, cropped)
    region: torch.Tensor = None  # (grid, grid) True for the patches a region caption could look at

    @property
    def text(self):
        return self.texts[0]

    def word_maps(self, layer=None):
        """(words, grid, grid): each word's attention, averaged over heads and over layers (or one layer)."""
        if self.cross_attention is None:
            return None  # a decoder without cross-attention (pure ClipCap) has nothing to show
        maps = self.cross_attention.mean(dim=1)  # (layers, words, grid, grid)
        return maps.mean(dim=0) if layer is None else maps[layer]


@contextmanager
def evaluating(model):
    """Eval mode (no dropout) inside the block, the model's previous mode after it."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


class Captioner:
    """A trained captioning model with its tokenizer and preprocessing: images in, captions out."""

    def __init__(self, model, tokenizer, preprocess):
        self.model = model
        self.tokenizer = tokenizer
        self.preprocess = preprocess  # how images are resized and normalised, as a plain dict
        self.transform = image_transform(preprocess)

    # -- files ---------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, device="cpu", for_images=False, download=False):
        """Load a model folder (config.json + model.safetensors), a training checkpoint (checkpoint.pt), or a
        Hugging Face ViT + GPT-2 captioner's folder (nlpconnect/vit-gpt2-image-captioning's layout).

        download=True: a name on the Hugging Face hub ("nlpconnect/vit-gpt2-image-captioning") is fetched
        first (needs internet and `pip install huggingface_hub`); nothing is ever downloaded otherwise.
        Raises CheckpointError, one sentence naming the file, for anything unusable, and with
        for_images=True for a model that reads only precomputed features. No code in the files is
        ever run: weights are read as safetensors or with torch.load(weights_only=True).
        """
        path = Path(path)
        if download and not path.exists():
            path = hub_download(str(path))
        if is_hugging_face_folder(path):
            return cls.from_hugging_face(path, device)
        if not path.exists() and len(path.parts) == 2 and not str(path).startswith((".", "/")):
            raise CheckpointError(f"{path}: no such model folder or checkpoint (a name on the Hugging Face hub is "
                                  "downloaded only when asked: download=True, or --download)")
        model, info = load_model(path, device)
        if for_images and model.encoder is None:
            raise CheckpointError(f"{path} has no image encoder (it reads precomputed features), "
                                  "so it cannot caption image files")
        return cls.from_model(model, info, path / "config.json" if path.is_dir() else path)

    @classmethod
    def from_hugging_face(cls, folder, device="cpu"):
        """A Hugging Face VisionEncoderDecoder folder (ViT + GPT-2, with vocab.json, merges.txt and
        preprocessor_config.json) -> a Captioner whose every step is this project's code."""
        from data.gpt2_bpe import GPT2Tokenizer
        from model.hugging_face import vision_encoder_decoder

        folder = Path(folder)
        try:
            model, _ = vision_encoder_decoder(folder)
            tokenizer = GPT2Tokenizer.from_folder(folder)
            preprocess = hugging_face_preprocess(folder, model.config.vit.image_size)
        except CheckpointError:  # HuggingFaceError is one: it names the file already
            raise
        except ValueError as e:  # the tokenizer's or the image processor's files
            raise CheckpointError(str(e)) from None
        return cls(model.to(device), tokenizer, preprocess).checked(folder)

    @classmethod
    def from_clipcap(cls, checkpoint, gpt2_folder, clip_pretrained="openai", device="cpu"):
        """ClipCap's released weights (e.g. coco_weights.pt; MLP or transformer mapper) with GPT-2's tokenizer files
        (vocab.json and merges.txt of a `gpt2` folder) and OpenCLIP's ViT-B-32: clip_pretrained "openai"
        downloads it (the user asked, by calling this), a path reads a local copy, None is random."""
        from data.gpt2_bpe import GPT2Tokenizer
        from model.clip import load_clip_vit
        from model.clipcap import clipcap_model

        try:
            vit, _ = load_clip_vit("ViT-B-32", clip_pretrained)
            model = clipcap_model(checkpoint, vit)
            tokenizer = GPT2Tokenizer.from_folder(gpt2_folder, end=".")  # ClipCap's captions end at the full stop
        except CheckpointError:  # HuggingFaceError is one: it names the file already
            raise
        except ValueError as e:  # the tokenizer's or the image processor's files
            raise CheckpointError(str(e)) from None
        return cls(model.to(device), tokenizer, dict(vit.preprocess_cfg, kind="openclip")).checked(checkpoint)

    @classmethod
    def from_model(cls, model, info, where="model"):
        """A Captioner of a loaded model and the "tokenizer" and "preprocess" saved with it (in `where`)."""
        try:
            tokenizer = tokenizer_from_dict(info["tokenizer"], f"{where}, tokenizer")
            captioner = cls(model, tokenizer, info["preprocess"])
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        except (KeyError, TypeError, AttributeError, AssertionError) as e:  # what a malformed spec makes them raise
            raise CheckpointError(f"{where}: malformed tokenizer or preprocessing ({e!r:.80})") from None
        return captioner.checked(where)

    def checked(self, where):
        """self, once it is sure to caption: its tokenizer writes every id the model can predict, and its
        preprocessing turns an image into finite pixels of the encoder's size. Otherwise CheckpointError
        naming `where`: a model refused at load, not a server that answers every request with an error."""
        V = self.model.decoder.config.vocab_size
        try:
            self.tokenizer.decode([i for i in range(V) if i != self.tokenizer.eos_id])  # decoding stops at eos
            ends = 0 <= self.tokenizer.bos_id < V and 0 <= self.tokenizer.eos_id < V
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise CheckpointError(f"{where}: the tokenizer cannot write every one of the model's {V} token ids "
                                  f"({type(e).__name__} {str(e)[:40]})") from None
        if not ends:
            raise CheckpointError(f"{where}: the tokenizer's start or end id is outside the model's {V} token ids")
        if self.model.encoder is None:
            return self
        S = self.model.encoder.config.image_size
        try:
            pixels = self.transform(Image.new("RGB", (37, 23), (120, 130, 140)))
        except Exception as e:  # noqa: BLE001 - whatever a malformed spec makes the transform raise
            raise CheckpointError(f"{where}: its preprocessing cannot prepare an image ({type(e).__name__} "
                                  f"{str(e)[:60]})") from None
        if tuple(pixels.shape) != (3, S, S):
            raise CheckpointError(f"{where}: its preprocessing makes {tuple(pixels.shape)} pixels; the encoder reads "
                                  f"(3, {S}, {S})")
        if not torch.isfinite(pixels).all():
            raise CheckpointError(f"{where}: its preprocessing gives pixels that are not finite numbers (a std of 0?)")
        return self

    def save_pretrained(self, folder):
        """Write a model folder that from_pretrained (and anyone else) can read without running code."""
        save_model_folder(folder, self.model, self.tokenizer.to_dict(), self.preprocess)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def dtype(self):
        """The weights' dtype, which images are given in: float32, or bfloat16 / float16 for faster inference."""
        return next(self.model.parameters()).dtype

    def to(self, device=None, dtype=None):
        """Move the model to `device` and/or cast its weights to `dtype` (captioning follows both)."""
        self.model.to(device=device, dtype=dtype)
        return self

    # -- captioning ----------------------------------------------------------------------------

    def texts(self, ids):
        """(B, T) token ids -> B strings."""
        return [self.tokenizer.decode(row.tolist()).strip() for row in ids]  # GPT-2 pieces carry their leading space

    @torch.no_grad()
    def caption(self, images, *, options=None, region=None, region_mask=None, attention=False, batch_size=32,
                max_time=None, **fields):
        """Caption PIL images or image files (one, or a list).

        options: a model.sampling.DecodingOptions, or its fields as keywords (beam, temperature, top_k, top_p,
        num, ...): the commands and the server build the object once and pass it on; both at once is an error.
        region: (x0, y0, x1, y1) or "x0,y0,x1,y1" in each image's pixels, or region_mask: an image (or
        its path), white inside the region: caption only what the region holds.
        attention: return a Caption (texts, words, per-word attention, rollout) instead of strings.
        max_time: seconds the decoding may take (all images together); past it, model.sampling.DecodingTimeout.

        Returns, per image, a string (a list of num strings when num > 1, a Caption with attention);
        one such result for one image, a list for a list.
        """
        single = not isinstance(images, (list, tuple))
        items = [images] if single else list(images)
        if options is not None and fields:
            raise TypeError(f"pass options=DecodingOptions(...) or its fields as keywords ({', '.join(fields)}), not both")
        options = DecodingOptions(**fields) if options is None else options
        if isinstance(region, str):
            region = parse_box(region)
        mask = None
        if region_mask is not None:  # (the picture, its name for messages)
            mask = (region_mask, "the region mask") if isinstance(region_mask, Image.Image) else (
                load_image(region_mask), str(region_mask))
        generator = torch.Generator(device=self.device).manual_seed(options.seed)
        deadline = time.monotonic() + max_time if max_time is not None else None
        results = []
        with evaluating(self.model):
            for start in range(0, len(items), batch_size):
                chunk = items[start : start + batch_size]
                pictures = [to_rgb(x) if isinstance(x, Image.Image) else load_image(x) for x in chunk]
                names = [(getattr(x, "filename", "") or "the image") if isinstance(x, Image.Image) else Path(x).name
                         for x in chunk]
                results += self.caption_pictures(pictures, names, options, region, mask, attention, generator, deadline)
        return results[0] if single else results

    def caption_pictures(self, pictures, names, options, region, mask, attention, generator, deadline=None):
        """Caption a batch of RGB PIL images (names: for messages); see caption()."""
        pixels = torch.stack([self.transform(p) for p in pictures]).to(self.device, self.dtype)  # (B, 3, S, S)
        patch_mask = prefix_images = None
        if region is not None or mask is not None:
            patch_mask, prefix_images = self.region_inputs(pictures, names, region, mask)
        runs = self.model.generate(self.tokenizer.bos_id, self.tokenizer.eos_id, images=pixels, options=options,
                                   patch_mask=patch_mask, prefix_images=prefix_images, generator=generator,
                                   deadline=deadline)
        texts = [list(per_image) for per_image in zip(*map(self.texts, runs))]  # per image, one text per run
        if attention:
            return [self.details(pixels[b], runs[0][b], texts[b], patch_mask, prefix_images, b)
                    for b in range(len(pictures))]
        return [t if options.num > 1 else t[0] for t in texts]

    def region_inputs(self, pictures, names, region, mask):
        """For each picture: the patches inside the region (B, N), and the region's crop (B, 3, S, S).
        region: a box (x0, y0, x1, y1), or mask: (mask picture, its name)."""
        if self.model.encoder is None:
            raise RegionError("this model reads precomputed features, so it cannot focus on a region")
        masks, crops = [], []
        grid = self.model.encoder.config.grid
        for picture, name in zip(pictures, names):
            W, H = picture.size
            if mask is not None:
                box, pixel_mask = mask_region(mask[0], W, H, mask[1])
            else:
                box, pixel_mask = fit_box(region, W, H, name), None
            masks.append(region_patch_mask(self.preprocess, W, H, grid, box, pixel_mask))
            crops.append(self.transform(picture.crop(tuple(round(v) for v in box))))
        return torch.stack(masks).to(self.device), torch.stack(crops).to(self.device, self.dtype)

    def details(self, pixels, ids, texts, patch_mask, prefix_images, b):
        """A Caption for image b: per-word cross-attention of its first caption, rollout, the model's view."""
        ids = ids.tolist()
        n = ids.index(self.tokenizer.eos_id) if self.tokenizer.eos_id in ids else len(ids)
        words = [self.tokenizer.decode([i]).strip() for i in ids[:n]]  # GPT-2 pieces: " dog" -> "dog"
        grid = self.model.encoder.config.grid
        encoded = self.model.encoder(pixels[None], return_attn=True)
        tokens = torch.tensor([[self.tokenizer.bos_id] + ids[:n]], device=self.device)  # (1, n + 1)
        cross = self.model.cross_attention(
            tokens, features=self.model.features_of(encoded),
            patch_mask=patch_mask[b : b + 1] if patch_mask is not None else None,
            prefix_images=prefix_images[b : b + 1] if prefix_images is not None else None)
        if cross is not None:  # (layers, 1, H, n + 1, N): row i is the query that wrote word i
            cross = cross[:, 0, :, :n].unflatten(-1, (grid, grid)).float().cpu()  # (layers, H, n, grid, grid)
        rollout = attention_rollout(encoded.attn)[0].view(grid, grid).float().cpu()
        mean = torch.tensor(self.preprocess["mean"]).view(3, 1, 1)
        std = torch.tensor(self.preprocess["std"]).view(3, 1, 1)
        view = (pixels.float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0).numpy()  # (S, S, 3)
        region = patch_mask[b].view(grid, grid).cpu() if patch_mask is not None else None
        return Caption(texts, words, cross, rollout, view, region)

    @torch.no_grad()
    def caption_source(self, source, rows, options=DecodingOptions(), batch_size=256):
        """The first caption of each image row of a training source (data/sources.py): pixels or cached
        features. What train.py scores after every epoch."""
        texts = []
        with evaluating(self.model):
            for i in range(0, len(rows), batch_size):
                inputs = source.get(rows[i : i + batch_size], self.device)
                runs = self.model.generate(self.tokenizer.bos_id, self.tokenizer.eos_id, options=options, **inputs)
                texts += self.texts(runs[0])
        return texts
