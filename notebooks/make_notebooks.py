"""Writes the notebooks from the cell lists below, without outputs. Edit here, then run:

    python notebooks/make_notebooks.py

Keeping the source as plain Python makes the notebooks reviewable in a diff.
"""

from pathlib import Path

import nbformat

# Where the project is published: the notebooks' setup cell clones it from here when it runs outside a
# checkout (Colab), and the README's "Open in Colab" badges point here (tests/test_notebooks.py checks both).
REPOSITORY = "https://github.com/OWNER/captioner"
BRANCH = "main"

SETUP = f"""%matplotlib inline
import os, subprocess, sys
from pathlib import Path

# The project's code: the folder above this notebook in a checkout; anywhere else (Colab) a clone, made once.
PROJECT = Path("..").resolve()
if not (PROJECT / "model" / "decoder.py").exists():
    PROJECT = Path("captioner").resolve()
    if not PROJECT.exists():
        source = os.environ.get("CAPTIONER_REPO", "{REPOSITORY}")
        subprocess.run(["git", "clone", "--quiet", "--depth", "1", source, str(PROJECT)], check=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "-r", str(PROJECT / "requirements.txt")],
                       check=True)
sys.path.insert(0, str(PROJECT))  # the notebooks import the project's own code from model/, data/, captioner/
import torch
import matplotlib.pyplot as plt
torch.manual_seed(0)"""


def colab_link(notebook):
    """The address that opens `notebook` (a file name in notebooks/) in Colab, straight from the repository."""
    return f"https://colab.research.google.com/github/{REPOSITORY.removeprefix('https://github.com/')}/blob/{BRANCH}/notebooks/{notebook}"


NOTEBOOKS = {
    "01_patches.ipynb": [
        ("md", """# 1. From pixels to patch tokens

A Vision Transformer never looks at single pixels. It cuts the image into square patches, flattens
each patch into a vector and projects it linearly to the model's width. The flattening is channel-first:
a patch's 3 x p x p values in the order (channel, row, column), the order of the convolution's weight
(C, 3, p, p), so pixel and weight line up. This notebook does that by
hand, then with the project's `PatchEmbedding`, and checks that both agree."""),
        ("code", SETUP),
        ("md", "A scene from the built-in dataset, 64 x 64 pixels, cut into 8 x 8 patches: an 8 x 8 grid of 64 patches."),
        ("code", """from data.shapes import make_split
from data.images import normalize

scene = make_split("test", 1, image_size=64)[0]
print(scene.captions[0])
image = normalize(torch.from_numpy(scene.image).permute(2, 0, 1)[None])  # (1, 3, 64, 64)
plt.imshow(scene.image); plt.title("the image"); plt.axis("off"); plt.show()"""),
        ("code", """p = 8
patches = image.unfold(2, p, p).unfold(3, p, p)        # (1, 3, 8, 8, p, p): channels, grid rows, grid cols, pixels
print(patches.shape)
fig, axes = plt.subplots(8, 8, figsize=(4, 4))
for r in range(8):
    for c in range(8):
        tile = scene.image[r * p:(r + 1) * p, c * p:(c + 1) * p]
        axes[r, c].imshow(tile); axes[r, c].axis("off")
plt.suptitle("the same image as 64 patches"); plt.show()"""),
        ("md", """Flatten each patch (3 x 8 x 8 = 192 numbers) in row-major order and multiply by a weight
matrix W of shape (192, C). That is the whole patch embedding."""),
        ("code", """from model.vit import PatchEmbedding

C = 32
embed = PatchEmbedding(patch_size=p, width=C)
flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(1, 64, 3 * p * p)  # (1, N, 192), patches in row-major order
W = embed.proj.weight.reshape(C, -1).T                                # (192, C): the convolution's kernel, flattened
by_hand = flat @ W                                                     # (1, N, C)
with_module = embed(image)                                             # a convolution with stride = kernel = 8
torch.testing.assert_close(by_hand, with_module)
print("by hand == PatchEmbedding:", by_hand.shape)"""),
        ("md", """## Positions

Attention has no notion of order, so each patch token gets a position vector added. Our ViT starts
these as 2-D sine waves when it is trained from scratch (OpenCLIP's weights overwrite them). Each small
picture below shows how similar one patch's position vector is to every other patch's: nearby patches
have similar positions."""),
        ("code", """from model.vit import sincos_2d

pos = sincos_2d(grid=8, width=64)                       # (64, 64): one vector per patch
pos = pos / pos.norm(dim=-1, keepdim=True)
similarity = pos @ pos.T                                # (64, 64): cosine similarity of every pair
fig, axes = plt.subplots(8, 8, figsize=(5, 5))
for i in range(64):
    axes[i // 8, i % 8].imshow(similarity[i].reshape(8, 8), cmap="viridis"); axes[i // 8, i % 8].axis("off")
plt.suptitle("position similarity, one panel per patch"); plt.show()"""),
    ],
    "02_attention.ipynb": [
        ("md", """# 2. Attention, one step at a time

Scaled dot-product attention: every query compares itself with every key, the scores are scaled by
the square root of the head width, masked, turned into probabilities by a softmax, and used to average
the values. We do one head by hand, draw the masks, then check the project's `MultiHeadAttention`
against PyTorch's own."""),
        ("code", SETUP + "\nimport math\nfrom model.attention import attention, causal_mask, padding_mask, MultiHeadAttention"),
        ("code", """T, D = 5, 4
q, k, v = torch.randn(T, D), torch.randn(T, D), torch.randn(T, D)
scores = q @ k.T                      # (T, T): how well each query matches each key
scaled = scores / math.sqrt(D)        # keeps the softmax from saturating as D grows
mask = causal_mask(T)                 # (T, T) booleans: True = may attend
masked = scaled.masked_fill(~mask, float("-inf"))
weights = masked.softmax(dim=-1)      # each row sums to 1 over the allowed keys
out = weights @ v                     # (T, D)
print(weights.round(decimals=2))
ours, ours_weights = attention(q[None, None], k[None, None], v[None, None], mask)
torch.testing.assert_close(ours[0, 0], out)
torch.testing.assert_close(ours_weights[0, 0], weights)
print("by hand == model.attention.attention")"""),
        ("md", "## The masks\n\nCausal: a caption token may look at itself and earlier tokens only. Padding: nobody looks at padding. They combine with `&`."),
        ("code", """lengths = torch.tensor([5, 3])
combined = causal_mask(5) & padding_mask(lengths, 5)   # (2, 1, 5, 5)
fig, axes = plt.subplots(1, 3, figsize=(9, 3))
for ax, m, title in zip(axes, [causal_mask(5), combined[0, 0], combined[1, 0]],
                        ["causal", "causal & padding (length 5)", "causal & padding (length 3)"]):
    ax.imshow(m, cmap="gray"); ax.set_title(title); ax.set_xlabel("key"); ax.set_ylabel("query")
plt.tight_layout(); plt.show()"""),
        ("md", """## Many heads, and a check against PyTorch

`MultiHeadAttention` projects the input to queries, keys and values, splits them into H heads of
width D = C / H, runs attention in each head and projects the concatenation back. Its parameters have
the names of `torch.nn.MultiheadAttention`, so weights copy across unchanged."""),
        ("code", """C, H = 16, 4
ours = MultiHeadAttention(C, H, fused=False)
reference = torch.nn.MultiheadAttention(C, H, batch_first=True)
reference.load_state_dict(ours.state_dict())
x = torch.randn(2, 5, C)
mask = causal_mask(5) & padding_mask(lengths, 5)
out, weights = ours(x, mask=mask, return_attn=True)           # weights: (B, H, T, T), one map per head
expected, _ = reference(x, x, x, attn_mask=~mask.expand(2, H, 5, 5).reshape(2 * H, 5, 5))  # torch: True = blocked
torch.testing.assert_close(out, expected)
print("ours == torch.nn.MultiheadAttention")
fig, axes = plt.subplots(1, H, figsize=(10, 2.5))
for h in range(H):
    axes[h].imshow(weights[1, h].detach(), cmap="magma"); axes[h].set_title(f"head {h}")
plt.suptitle("attention weights of the second sequence (length 3): masked keys get exactly 0"); plt.show()"""),
        ("md", "The fused path (`F.scaled_dot_product_attention`) gives the same output, faster; asking for the weights uses the explicit path above."),
        ("code", """fused = MultiHeadAttention(C, H, fused=True)
fused.load_state_dict(ours.state_dict())
torch.testing.assert_close(fused(x, mask=mask)[0], out)
print("fused == explicit")"""),
    ],
    "03_vit_and_clip.ipynb": [
        ("md", """# 3. A ViT, and OpenCLIP's weights inside it

Our `VisionTransformer` is written by hand but uses OpenCLIP's parameter names, so a pretrained CLIP
vision tower loads into it. **Offline, this notebook uses random weights** (`pretrained=None`); with
internet, the one line that loads the real ones is:

```python
vit, preprocess = load_clip_vit("ViT-B-32", pretrained="openai")   # or a local checkpoint file
```"""),
        ("code", SETUP + """
import open_clip
from model.clip import vit_config_from_openclip
from model.vit import VisionTransformer"""),
        ("code", """clip, _, preprocess = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)  # random: no download
clip.eval()
config = vit_config_from_openclip(clip.visual)
print(config)
ours = VisionTransformer(config).eval()
ours.load_openclip_state_dict(clip.visual.state_dict())
images = torch.randn(2, 3, 224, 224)
with torch.no_grad():
    out = ours(images, return_attn=True)
    expected = clip.encode_image(images)
torch.testing.assert_close(out.pooled, expected, rtol=1e-4, atol=1e-4)
print("pooled embedding", tuple(out.pooled.shape), "patch tokens", tuple(out.patches.shape),
      "attention maps", len(out.attn), "x", tuple(out.attn[0].shape))
print("ours == OpenCLIP's encode_image")"""),
        ("md", """## Where the class token looks: attention maps and rollout

Each layer's attention says how much the class token reads from each patch. Attention rollout
multiplies the layers' maps (with the residual path mixed in) to follow the flow through all layers.
A real photo is used when `../shared` is beside the project (the project's own machines); otherwise a
scene from the built-in dataset. With random weights the maps show no meaning, only the mechanics: any
shape you see in them comes from the pixels themselves (a bright object gives large activations even
through random projections), not from anything the model learned."""),
        ("code", """from PIL import Image
from data.images import load_image
from data.paths import SHARED_DATA
from data.shapes import make_split
from model.rollout import attention_rollout

vit = ours  # the ViT above; load_clip_vit("ViT-B-32", pretrained=...) gives the same with real weights
photo = SHARED_DATA / "flickr30k-mini/images/1000268201.jpg"   # only on the project's own machines
picture = load_image(photo) if photo.exists() else Image.fromarray(make_split("test", 1, 224)[0].image)
with torch.no_grad():
    out = vit(preprocess(picture)[None], return_attn=True)
grid = vit.config.grid
first_layer = out.attn[0][0].mean(0)[0, 1:].reshape(grid, grid)   # class token's row, heads averaged
rollout = attention_rollout(out.attn)[0].reshape(grid, grid)
fig, axes = plt.subplots(1, 3, figsize=(10, 3.5))
axes[0].imshow(picture.resize((224, 224))); axes[0].set_title("image")
axes[1].imshow(first_layer); axes[1].set_title("layer 1, class token")
axes[2].imshow(rollout); axes[2].set_title("rollout over 12 layers")
for ax in axes: ax.axis("off")
plt.show()"""),
    ],
    "04_decoder.ipynb": [
        ("md", """# 4. The decoder: a prefix, masked self-attention, cross-attention

The decoder reads a sequence of P prefix tokens, made from the CLIP embedding by a small MLP (ClipCap),
followed by the caption's T tokens. Masked self-attention lets every position see the whole prefix and
the caption up to itself; cross-attention lets every position look at the image's patch tokens. We
trace the tensor shapes through one forward pass."""),
        ("code", SETUP + """
from model.decoder import CaptionDecoder, DecoderConfig
from model.attention import prefix_lm_mask"""),
        ("code", """config = DecoderConfig(vocab_size=100, max_len=12, width=32, layers=2, heads=4, prefix_len=3,
                       clip_dim=24, patch_dim=20, dropout=0.0)
decoder = CaptionDecoder(config).eval()
B, T, N = 2, 6, 16                              # L = P + T = 9 positions, N = 16 patches: every size differs
tokens = torch.randint(0, 100, (B, T))          # (B, T) caption ids
clip_embed = torch.randn(B, config.clip_dim)    # (B, E) pooled CLIP embedding
patches = torch.randn(B, N, config.patch_dim)   # (B, N, patch_dim) patch tokens

prefix = decoder.prefix(clip_embed)
print("prefix            ", tuple(prefix.shape), "  (B, P, C)")
x = decoder.token_embedding(tokens) + decoder.positional_embedding[:T]
print("caption embeddings", tuple(x.shape), "  (B, T, C)")
memory = decoder.patch_proj(patches)
print("image memory      ", tuple(memory.shape), "  (B, N, C)")
out = decoder(tokens, clip_embed, patches, return_attn=True)
print("logits            ", tuple(out.logits.shape), "  (B, T, V): position t predicts token t + 1")
print("self-attention    ", tuple(out.self_attn[0].shape), "  (B, H, L, L), L = P + T")
print("cross-attention   ", tuple(out.cross_attn[0].shape), "  (B, H, L, N)")"""),
        ("md", "## The self-attention mask, and the weights it produces"),
        ("code", """P = config.prefix_len
mask = prefix_lm_mask(P, T)   # the helper CaptionDecoder.forward builds its mask with
print(mask.int())
fig, axes = plt.subplots(1, 3, figsize=(11, 3.5))
axes[0].imshow(mask, cmap="gray"); axes[0].set_title("mask: prefix seen whole, caption causal")
axes[1].imshow(out.self_attn[0][0].mean(0).detach(), cmap="magma"); axes[1].set_title("self-attention, layer 1")
axes[2].imshow(out.cross_attn[0][0].mean(0).detach(), cmap="magma"); axes[2].set_title("cross-attention: rows L, cols N")
for ax in axes[:2]:
    ax.axhline(P - 0.5, color="cyan"); ax.axvline(P - 0.5, color="cyan")
plt.tight_layout(); plt.show()"""),
        ("md", "Causality, checked: changing the 5th caption token changes no earlier logit."),
        ("code", """changed = tokens.clone(); changed[:, 4] = (changed[:, 4] + 1) % 100
after = decoder(changed, clip_embed, patches).logits
torch.testing.assert_close(after[:, :4], out.logits[:, :4])
print("earlier logits unchanged; later ones differ:", not torch.allclose(after[:, 4:], out.logits[:, 4:]))"""),
        ("md", "Incremental decoding with a KV cache gives the same logits as running the whole sequence again."),
        ("code", """cache = decoder.new_cache()
steps = [decoder(tokens[:, :1], clip_embed, patches, cache=cache).logits]
for t in range(1, T):
    steps.append(decoder(tokens[:, t:t + 1], clip_embed, patches, cache=cache).logits)
torch.testing.assert_close(torch.cat(steps, 1), out.logits)
print("KV cache == full recomputation")"""),
    ],
    "05_training.ipynb": [
        ("md", """# 5. Training a captioner on the CPU

We run `train.py` itself, the command a user types, on part of the built-in data (8,000 of its 20,000
training scenes): one epoch, a look at some captions, then `--resume` for a second epoch and another
look. Together under a minute on 2 CPU cores; the full default (`python train.py`) gets over 99% of
the test captions exactly right in about a minute more. The captions come from the Python API, `Captioner`, which reads what train.py wrote."""),
        ("code", SETUP + """
import json
from PIL import Image
from captioner import Captioner
from data.shapes import make_split

scenes = make_split("test", 6, 32)  # test images the model never trains on
images = [Image.fromarray(s.image) for s in scenes]


def show_samples(path, title):
    captioner = Captioner.from_pretrained(path)   # a training checkpoint or a model folder
    fig, axes = plt.subplots(1, 6, figsize=(14, 2.8))
    for ax, scene, caption in zip(axes, scenes, captioner.caption(images)):
        ok = "right" if caption in scene.captions else "wrong"
        ax.imshow(scene.image); ax.axis("off")
        ax.set_title(f"{ok}: " + caption.replace(" to the", "\\nto the").replace(" above", "\\nabove"), fontsize=8)
    plt.suptitle(title); plt.show()"""),
        ("md", """One epoch (250 steps of 32 captions), then stop: the checkpoint keeps everything needed to go on.
`--progress-every 10` redraws the progress bar every 10 seconds, so the notebook keeps a few lines of it."""),
        ("code", """!{sys.executable} "{PROJECT}/train.py" --progress-every 10 --shapes-train 8000 --shapes-val 200 --shapes-test 200 --out runs/notebook --stop-after 250
show_samples("runs/notebook/checkpoint.pt", "after one epoch")"""),
        ("code", """!{sys.executable} "{PROJECT}/train.py" --progress-every 10 --out runs/notebook --resume
show_samples("runs/notebook/model", "after two epochs: the model folder train.py writes at the end")"""),
        ("md", "The loss falls; the validation metrics are logged at the end of every epoch."),
        ("code", """records = [json.loads(line) for line in open("runs/notebook/metrics.jsonl")]
steps = [r["step"] for r in records if "train_loss" in r]
losses = [r["train_loss"] for r in records if "train_loss" in r]
plt.figure(figsize=(6, 3)); plt.plot(steps, losses); plt.yscale("log")
plt.xlabel("step"); plt.ylabel("training loss"); plt.show()
for r in records:
    if "val_loss" in r:
        print(f"epoch {r['epoch']}: exact captions {r['val_exact']:.1%}, BLEU-4 {r['val_BLEU-4']:.3f}")"""),
    ],
    "06_decoding_and_attention.ipynb": [
        ("md", """# 6. Decoding strategies, attention pictures, region captions

Uses the model trained in notebook 5 (or trains the same one if it is missing), through the
Python API: `Captioner.from_pretrained(folder)`, then `captioner.caption(image, ...)`."""),
        ("code", SETUP + """
from pathlib import Path
from PIL import Image
from captioner import Captioner
from captioner.pictures import attention_figure
from data.shapes import make_split
from model.sampling import top_p_filter

model_folder = Path("runs/notebook/model")
if not model_folder.exists():
    !{sys.executable} "{PROJECT}/train.py" --progress-every 10 --shapes-train 8000 --out runs/notebook
captioner = Captioner.from_pretrained(model_folder)
tokenizer = captioner.tokenizer"""),
        ("md", """## One image, five ways to decode

Each keyword is a field of `model.sampling.DecodingOptions`, as each flag of `generate.py` is. The three
sampled captions share a temperature of 2 and a seed, so they differ only by their filter: the logits are
divided by the temperature first, then top-k or top-p cuts the flattened tail before sampling."""),
        ("code", """scene = make_split("test", 32, 32)[31]
image = Image.fromarray(scene.image).resize((128, 128), Image.NEAREST)
ways = {
    "greedy": {},
    "beam 3": dict(beam=3),
    "temperature 2": dict(temperature=2.0, seed=0),
    "top-k 3, T 2": dict(temperature=2.0, top_k=3, seed=0),
    "top-p 0.5, T 2": dict(temperature=2.0, top_p=0.5, seed=0),
}
plt.imshow(scene.image); plt.axis("off"); plt.title("references: " + " | ".join(scene.captions), fontsize=8); plt.show()
for name, options in ways.items():
    print(f"{name:18} {captioner.caption(image, **options)}")"""),
        ("md", """Top-p keeps, in each row, the smallest set of tokens whose probability reaches p. Here, for the word
after "a", at the same temperature 2 (grey bars are cut; with temperature alone any of them can be drawn):"""),
        ("code", """pixels = captioner.transform(image)[None]                      # (1, 3, S, S): the model's view
tokens = torch.tensor([[tokenizer.bos_id, tokenizer.stoi["a"]]])
with torch.no_grad():
    logits = captioner.model(tokens, images=pixels).logits[0, -1:] / 2.0  # (1, V): the next word's scores at T 2
probs = logits.softmax(-1)[0]
kept = top_p_filter(logits, 0.5)[0] > float("-inf")
order = probs.argsort(descending=True)[:8]
plt.figure(figsize=(7, 2.5))
plt.bar([tokenizer.itos[i] for i in order], probs[order], color=["C2" if kept[i] else "C7" for i in order])
plt.title("next-word probabilities after 'a' at temperature 2: green = kept by top-p 0.5"); plt.show()"""),
        ("md", "## Where the decoder looked, word by word\n\nThe same picture `python generate.py MODEL scene.png --attention DIR` writes:"),
        ("code", """result = captioner.caption(image, attention=True)
print(result.words)
print("cross-attention:", tuple(result.cross_attention.shape), "(layers, heads, words, grid, grid)")
attention_figure(result)"""),
        ("md", """## Region-focused captions

Cross-attention limited to the patches inside a box, and the prefix made from the crop: a box around
each object in turn. Be warned: this model had two epochs, and regions are the hardest thing to ask
of it; it often names the boxed object correctly but then invents a second one. The test suite checks,
on 96 boxes with the main job's model, that at least 65% of the captions name the boxed object and not the
other (`tests/test_generate.py`; measured: 77% over 240 boxes)."""),
        ("code", """for obj in scene.objects:
    x0, y0, x1, y1 = (4 * v for v in obj.box)
    box = (max(0, x0 - 8), max(0, y0 - 8), x1 + 12, y1 + 12)
    print(f"box around the {obj.colour} {obj.shape}: {captioner.caption(image, region=box)}")"""),
        ("md", """## Where a real captioner looks: ViT-GPT2

`nlpconnect/vit-gpt2-image-captioning` (a ViT encoder and GPT-2 with cross-attention, trained on COCO)
loads into this project's own modules. With a local copy of its folder (or `VIT_GPT2=path`), the cell
below captions the scene above with it and draws each word's cross-attention, averaged over GPT-2's
12 layers. Offline and without it, the same architecture, small and with random weights, shows the
machinery: the maps then mean nothing."""),
        ("code", """from data.gpt2_bpe import END_OF_TEXT, GPT2Tokenizer, byte_characters
from model.caption_model import CaptionModel, CaptionModelConfig
from model.decoder import DecoderConfig
from model.vit import ViTConfig

folder = Path(os.environ.get("VIT_GPT2", "vit-gpt2-image-captioning"))
if folder.exists():
    real = Captioner.from_pretrained(folder)
else:  # ViT-GPT2's shape, smaller, random: a ViT whose class token the decoder also reads, GPT-2 without a prefix
    vit = ViTConfig(image_size=224, patch_size=16, width=64, layers=2, heads=4, output_dim=64, patch_bias=True,
                    ln_pre=False, norm_eps=1e-12, class_token_in_memory=True)
    ascii_only = {byte_characters()[b]: i for i, b in enumerate(range(32, 127))} | {END_OF_TEXT: 95}  # no merges
    gpt2 = DecoderConfig(vocab_size=96, max_len=24, width=64, layers=2, heads=4, prefix_len=0, clip_dim=64,
                         patch_dim=64, gelu="tanh", patch_proj="none", dropout=0.0)
    real = Captioner(CaptionModel(CaptionModelConfig(vit, gpt2)).eval(), GPT2Tokenizer(ascii_only, []),
                     {"kind": "squash", "image_size": 224, "resample": "bilinear", "mean": [0.5] * 3, "std": [0.5] * 3})
result = real.caption(image, attention=True, max_len=12)
print("caption:", repr(result.text))
attention_figure(result)"""),
    ],
    "07_write_your_own_attention.ipynb": [
        ("md", """# 7. Write the attention yourself, check it, caption with it

The project's exercises (`exercises/README.md`) as a notebook: write `attention` in a cell, let the checker
compare it with the project's own code, fix it, then train the captioner and draw its attention pictures
with your function in place of ours. The same works from a shell: `python -m exercises check attention`
and `python train.py --student-code attention`."""),
        ("code", SETUP + """
from PIL import Image
from captioner import Captioner
from captioner.pictures import attention_figure
from data.shapes import make_split
from exercises import check_folder, start, student_code, use_student_code

_ = start("my_exercises")  # copies the stubs here the first time; never overwrites your work"""),
        ("md", "A first try, written to `my_exercises/attention.py` by the cell itself (`%%writefile`). It has a classic mistake:"),
        ("code", """%%writefile my_exercises/attention.py
import math
import torch


def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1)                          # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)                          # (B, H, T, S)
    return weights @ v, weights"""),
        ("code", """check_folder("attention", "my_exercises", quiet=False);"""),
        ("md", "The checker found the first case that differs and named the likely mistake. Fixed:"),
        ("code", """%%writefile my_exercises/attention.py
import math
import torch


def attention(q, k, v, mask=None):
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # (B, H, T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    weights = scores.softmax(dim=-1)                          # (B, H, T, S)
    return weights @ v, weights"""),
        ("code", """check_folder("attention", "my_exercises", quiet=False);"""),
        ("md", """## Train with your attention

`--student-code attention` puts your function into every attention layer of the ViT and the decoder.
A short run here (20 steps: far too short to caption well, long enough to see the loss fall);
the full `python train.py --student-code attention` reaches the same 99% as the normal run."""),
        ("code", """!{sys.executable} "{PROJECT}/train.py" --progress-every 10 --student-code attention --student-dir my_exercises --shapes-train 640 --epochs 1 --shapes-val 20 --shapes-test 20 --val-images 20 --out runs/mine"""),
        ("md", """## Your attention draws the pictures

The model notebook 5 trained (trained here if it is missing), captioning with your function in place of
ours: the same caption, and every map in these pictures came out of your `attention`."""),
        ("code", """from pathlib import Path

if not Path("runs/notebook/model").exists():
    !{sys.executable} "{PROJECT}/train.py" --progress-every 10 --shapes-train 8000 --out runs/notebook
captioner = Captioner.from_pretrained("runs/notebook/model")
image = Image.fromarray(make_split("test", 32, 32)[5].image).resize((128, 128), Image.NEAREST)
with use_student_code(student_code("attention", "my_exercises")):
    yours = captioner.caption(image, attention=True)
print("with your attention:", yours.text, "| with ours:", captioner.caption(image))
attention_figure(yours)"""),
    ],
}


# Numbers the notebooks' text states that no cell computes, each with the file that states it (checked by
# tests/test_notebooks.py: every other number in the text must appear in a cell or its output).
QUOTED = {  # numbers the text states that no cell computes: notebook -> {number: (file, words it says them in)}
    "05_training.ipynb": {
        "20000": ("training/config.py", "shapes_train: int = 20000"),
        "99": ("tests/test_train.py", 'assert final["test_exact"] >= 0.99'),
    },
    "06_decoding_and_attention.ipynb": {
        "96": ("tests/test_generate.py", "(96 captions)"),
        "65": ("tests/test_generate.py", "assert hits / (2 * len(pairs)) >= 0.65"),
        "77": ("tests/test_generate.py", "over 240 boxes 77%"),
        "240": ("tests/test_generate.py", "over 240 boxes 77%"),
    },
    "07_write_your_own_attention.ipynb": {
        "99": ("tests/test_train.py", 'assert final["test_exact"] >= 0.99'),
    },
}


def main(folder=Path(__file__).parent):
    """Write every notebook into `folder` (this one by default; the tests write a copy elsewhere to compare)."""
    folder = Path(folder)
    for name, cells in NOTEBOOKS.items():
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                    for kind, src in cells]
        for i, cell in enumerate(nb.cells):
            cell.id = f"cell-{i}"  # fixed ids: regenerating gives no diff
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, folder / name)
        print("wrote", folder / name)


if __name__ == "__main__":
    main()
