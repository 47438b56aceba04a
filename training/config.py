"""Training settings: one dataclass (the component configs nested in it) and named presets.

train.py builds its flags from these fields, so every setting is a flag, `--help` shows each field's
comment and groups the flags by the sections below (data, model, optimisation, validation, run, logging);
the benchmarks build the same configuration to measure what train.py runs.
"""

import dataclasses
from dataclasses import dataclass, field

from model.config import from_dict
from model.decoder import DecoderConfig
from model.vit import ViTConfig


@dataclass
class TrainConfig:
    # A comment on a line of its own starts a section, which is a group of `python train.py --help`; a nested
    # config's flags (--vit-*, --decoder-*) make a group of their own, "SECTION: the comment on its field".
    # data
    data: str = "shapes"  # "shapes" (built in, generated from the seed) or a caption file
    images: str = ""  # images folder, for a caption file
    skip_missing: bool = False  # drop captioned images the folder lacks, instead of stopping
    shapes_train: int = 20000  # built-in dataset: training images
    shapes_val: int = 500  # built-in dataset: validation images
    shapes_test: int = 1000  # built-in dataset: test images, captioned at the end
    train_on_all_references: bool = False  # built-in dataset: also teach the second word order (slower to learn)
    # model
    encoder: str = "scratch"  # "scratch": the ViT below, trained with the decoder; "clip": frozen OpenCLIP, cached features
    clip_model: str = "ViT-B-32"  # OpenCLIP architecture, for --encoder clip
    clip_pretrained: str = "openai"  # OpenCLIP tag (downloads), a local checkpoint file, or "none" for random weights
    feature_cache: str = "cache"  # folder of cached CLIP features
    vit: ViTConfig = field(default_factory=ViTConfig)  # the scratch ViT (--encoder scratch)
    tokenizer: str = "word"  # "word" (vocabulary of the training captions) or "bpe" (OpenCLIP's, 49,408 ids)
    gpt2: str = ""  # a GPT-2 or DistilGPT2 folder (Hugging Face layout): the decoder and tokenizer start from it
    download: bool = False  # --gpt2 is a name on the Hugging Face hub (e.g. distilgpt2): download it (needs internet)
    min_count: int = 1  # word tokenizer: rarer words become <unk>
    decoder: DecoderConfig = field(default_factory=DecoderConfig)  # the decoder
    # model: your own code (exercises/README.md)
    student_code: str = ""  # exercises whose code you wrote to train with, e.g. "attention,block" or "all"
    student_dir: str = "my_exercises"  # the folder with your exercise files (python -m exercises)
    # optimisation
    train_only: str = "all"  # "all", "cross_attention" (cross-attention layers only) or "prefix" (prefix mapper only)
    epochs: int = 2  # passes over the training captions
    group_by_length: bool = False  # batches of captions of similar length: far less padding
    batch_size: int = 32  # captions per step
    lr: float = 1e-3  # peak learning rate of AdamW, after warm-up; cosine decay to 0
    weight_decay: float = 0.01  # AdamW's decoupled weight decay
    warmup_steps: int = 200  # steps of linear warm-up
    grad_clip: float = 1.0  # gradients are clipped to this global norm
    grad_accum: int = 1  # run each batch as this many micro-batches, one after another: the same step, less memory
    label_smoothing: float = 0.0  # share of the target probability spread over the vocabulary
    # validation
    val_images: int = 500  # validation images captioned (and scored) after each epoch
    best_metric: str = "CIDEr-D"  # validation score that picks the best model, kept in OUT/best/: CIDEr-D, BLEU-4, exact or loss
    patience: int = 0  # stop early after this many validations in a row without a better best_metric; 0 = never
    # run
    out: str = "runs/shapes"  # checkpoint.pt, model/, metrics.jsonl and loss_curve.png go here
    resume: bool = False  # continue from OUT/checkpoint.pt with the settings it was started with
    stop_after: int = 0  # stop (with a checkpoint) after this many steps; 0 = run to the end
    checkpoint_every: int = 200  # steps between checkpoints; one is also written at the end of every epoch
    seed: int = 0  # seeds the model, the data order and the built-in dataset
    device: str = "auto"  # "auto" (CUDA, else a Mac's MPS, else the CPU), "cpu", "cuda", "cuda:1", "mps", ...
    amp: bool = True  # mixed precision on CUDA: bfloat16 where the GPU has it, else float16 with a gradient scaler
    compile: bool = False  # torch.compile the training step's model: faster steps on a GPU after a slow first one
    # logging
    progress_every: float = 0.1  # seconds between redraws of the progress bar; 10 keeps a notebook's or a log's output short
    tensorboard: bool = False  # also log to OUT/tensorboard (pip install tensorboard): losses, learning rate, validation scores, sample captions and attention

    ALL_FIELDS_OPTIONAL = True  # a checkpoint from before a setting existed takes its default: how such runs behaved

    @classmethod
    def from_dict(cls, values, where="training config"):
        """The inverse of model.config.to_dict; every field must be known (model/config.py)."""
        return from_dict(cls, values, where)


PRESETS = {
    "tiny": dict(  # the default: built-in shapes, a small ViT trained from scratch, minutes on a CPU
        vit=dict(image_size=32, patch_size=8, width=128, layers=3, heads=4, mlp_ratio=2.0, sincos_init=True),
        decoder=dict(width=128, layers=2, heads=4, mlp_ratio=2.0, prefix_len=4, max_len=16, dropout=0.0),
    ),
    "flickr30k": dict(  # frozen CLIP features and the 6 x 512 decoder (DecoderConfig's defaults): GPU work
        data="", encoder="clip", min_count=5, epochs=10, group_by_length=True, batch_size=64, lr=3e-4,
        warmup_steps=1000, label_smoothing=0.1, checkpoint_every=1000, out="runs/flickr30k",
    ),
    "flickr30k-gpt2": dict(  # frozen CLIP features into a pretrained GPT-2 (--gpt2 FOLDER) with fresh cross-attention
        data="", encoder="clip", epochs=5, group_by_length=True, batch_size=64, lr=1e-4, warmup_steps=1000,
        label_smoothing=0.1, checkpoint_every=1000, out="runs/flickr30k-gpt2",
        decoder=dict(prefix_len=0, max_len=40, dropout=0.1),
    ),
}

# Fields of the nested configs that get no flag: training derives them (from the tokenizer, the encoder).
DERIVED = {"vit": {"output_dim"}, "decoder": {"vocab_size", "clip_dim", "patch_dim"}}


def config_with(preset="tiny", start=None, **overrides):
    """TrainConfig of a preset, with overrides; nested configs take dicts of their own fields:
    config_with("flickr30k", batch_size=32, decoder={"layers": 4}). start: a saved run's settings (the dict of
    its train_config.json) to begin from instead of a preset."""
    values = dataclasses.asdict(TrainConfig() if start is None else TrainConfig.from_dict(start, preset))
    for changes in (PRESETS[preset] if start is None else {}, overrides):
        for name, value in changes.items():
            if name in ("vit", "decoder"):
                values[name] = dict(values[name], **value)
            else:
                values[name] = value
    return TrainConfig.from_dict(values, f"preset {preset!r}" if start is None else preset)
