"""ClipCap's checkpoint layout loads into our decoder and equals ClipCap's own forward, built here from the
modules its repository uses (GPT2LMHeadModel from transformers, a test-only dependency, and an MLP)."""

import pytest
import torch
from torch import nn

from model.clipcap import clipcap_model, load_clipcap_decoder
from model.hugging_face import HuggingFaceError
from model.sampling import DecodingOptions
from model.vit import ViTConfig, VisionTransformer

transformers = pytest.importorskip("transformers")
P, E = 4, 16  # prefix length, CLIP embedding width


class ClipCaptionModel(nn.Module):
    """ClipCap's model as its repository writes it (train.py: ClipCaptionModel with MappingType.MLP)."""

    def __init__(self, vocab_size=50, clip_dim=E):
        super().__init__()
        self.gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(
            vocab_size=vocab_size, n_positions=40, n_embd=64, n_layer=2, n_head=1, initializer_range=0.3,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
        C = self.gpt.config.n_embd
        self.clip_project = nn.Module()
        self.clip_project.model = nn.Sequential(nn.Linear(clip_dim, C * P // 2), nn.Tanh(), nn.Linear(C * P // 2, C * P))

    def forward(self, tokens, prefix):
        embedding_text = self.gpt.transformer.wte(tokens)
        prefix_projections = self.clip_project.model(prefix).view(-1, P, self.gpt.config.n_embd)
        return self.gpt(inputs_embeds=torch.cat((prefix_projections, embedding_text), dim=1)).logits


class ClipCapAttention(nn.Module):
    """ClipCap's MultiHeadAttention (train.py), self-attention only, as the mapper uses it."""

    def __init__(self, dim, heads):
        super().__init__()
        self.num_heads, self.scale = heads, (dim // heads) ** -0.5
        self.to_queries = nn.Linear(dim, dim, bias=False)
        self.to_keys_values = nn.Linear(dim, dim * 2, bias=False)
        self.project = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        queries = self.to_queries(x).reshape(b, n, self.num_heads, c // self.num_heads)
        keys_values = self.to_keys_values(x).reshape(b, n, 2, self.num_heads, c // self.num_heads)
        keys, values = keys_values[:, :, 0], keys_values[:, :, 1]
        attention = (torch.einsum("bnhd,bmhd->bnmh", queries, keys) * self.scale).softmax(dim=2)
        return self.project(torch.einsum("bnmh,bmhd->bnhd", attention, values).reshape(b, n, c))


class ClipCapTransformerLayer(nn.Module):
    def __init__(self, dim, heads):
        super().__init__()
        self.norm1, self.attn, self.norm2 = nn.LayerNorm(dim), ClipCapAttention(dim, heads), nn.LayerNorm(dim)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(dim, dim * 2), nn.Linear(dim * 2, dim)  # mlp_ratio 2, ReLU

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp.fc2(torch.relu(self.mlp.fc1(self.norm2(x))))


class TransformerMapper(nn.Module):
    """ClipCap's TransformerMapper (train.py), with clip_length == prefix_length as in its released weights."""

    def __init__(self, dim_clip, dim, prefix_length, num_layers=3):
        super().__init__()
        self.clip_length = prefix_length
        self.transformer = nn.Module()
        self.transformer.layers = nn.ModuleList(ClipCapTransformerLayer(dim, 8) for _ in range(num_layers))
        self.linear = nn.Linear(dim_clip, prefix_length * dim)
        self.prefix_const = nn.Parameter(torch.randn(prefix_length, dim))

    def forward(self, x):
        x = self.linear(x).view(x.shape[0], self.clip_length, -1)
        prefix = torch.cat((x, self.prefix_const.unsqueeze(0).expand(x.shape[0], *self.prefix_const.shape)), dim=1)
        for layer in self.transformer.layers:
            prefix = layer(prefix)
        return prefix[:, self.clip_length:]


def test_a_clipcap_checkpoint_with_the_transformer_mapper_equals_clipcaps_forward(tmp_path):
    torch.manual_seed(0)
    reference = ClipCaptionModel().eval()
    mapper = TransformerMapper(E, 64, P)
    for p in mapper.parameters():  # LayerNorms that are not the identity, so a misplaced one shows
        p.data += 0.1 * torch.randn_like(p)
    reference.clip_project = mapper.eval()
    torch.save(reference.state_dict(), tmp_path / "transformer_weights.pt")
    ours = load_clipcap_decoder(tmp_path / "transformer_weights.pt")
    assert (ours.config.prefix_mapper, ours.config.mapper_layers) == ("clipcap-transformer", 3)
    tokens, prefix = torch.randint(0, 50, (2, 7)), torch.randn(2, E)
    with torch.no_grad():
        embeds = torch.cat([mapper(prefix), reference.gpt.transformer.wte(tokens)], dim=1)
        expected = reference.gpt(inputs_embeds=embeds).logits[:, P - 1:]
        got = ours(torch.cat([torch.zeros(2, 1, dtype=torch.long), tokens], 1), prefix).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    reference = ClipCaptionModel().eval()
    path = tmp_path / "coco_prefix-009.pt"
    torch.save(reference.state_dict(), path)  # what ClipCap's train.py saves
    return reference, path


def test_a_clipcap_checkpoint_equals_clipcaps_forward(checkpoint):
    reference, path = checkpoint
    ours = load_clipcap_decoder(path)
    assert (ours.config.prefix_len, ours.config.clip_dim, ours.config.layers, ours.config.heads) == (P, E, 2, 1)
    tokens, prefix = torch.randint(0, 50, (2, 7)), torch.randn(2, E)
    start = torch.zeros(2, 1, dtype=torch.long)  # our interface's start token: ClipCap's is the prefix's last position
    with torch.no_grad():
        expected = reference(tokens, prefix)[:, P - 1:]  # (B, 1 + T, V): the last prefix position, then the caption
        got = ours(torch.cat([start, tokens], 1), prefix).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_clipcap_captions_greedily_as_its_own_loop_does(checkpoint):
    """ClipCap's generate2 (greedy): feed the prefix, take the argmax, append its embedding, repeat; our
    sampler with the KV cache must write the same tokens."""
    reference, path = checkpoint
    torch.manual_seed(1)
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, output_dim=E))
    model = clipcap_model(path, vit)  # with a real checkpoint: load_clip_vit("ViT-B-32", "openai")
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        prefix = model.encoder(images).pooled
        embeds = reference.clip_project.model(prefix).view(-1, P, 64)
        expected = []
        for _ in range(8):
            next_token = reference.gpt(inputs_embeds=embeds).logits[:, -1].argmax(-1)  # (B,)
            expected.append(next_token)
            embeds = torch.cat([embeds, reference.gpt.transformer.wte(next_token)[:, None]], dim=1)
    got = model.generate(49, 49, images=images, options=DecodingOptions(max_len=8))[0]
    assert got.tolist() == torch.stack(expected, 1).tolist()
    assert len(set(got[0].tolist())) > 2  # a varied caption: the comparison means something
    # With no end token ever written, decoding runs to the end of GPT-2's 40 positions, the prefix's 4
    # included (max_caption), and asks for no position beyond the table.
    longest = model.decoder.max_caption - 1
    assert longest == 40 - P  # the start token takes no position
    assert model.generate(0, -1, images=images)[0].shape[1] == longest
    assert model.generate(0, -1, images=images, options=DecodingOptions(beam=2))[0].shape[1] == longest


def test_other_files_are_refused_in_one_line(checkpoint, tmp_path):
    reference, path = checkpoint
    state = reference.state_dict()
    del state["clip_project.model.2.weight"]
    torch.save(state, tmp_path / "cut.pt")
    with pytest.raises(HuggingFaceError, match=r"cut.pt: the weights lack clip_project.model.2.weight"):
        load_clipcap_decoder(tmp_path / "cut.pt")
    torch.save({"weight": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(HuggingFaceError, match=r"other.pt: not a ClipCap checkpoint"):
        load_clipcap_decoder(tmp_path / "other.pt")


def small_clip(name, pretrained):
    """What load_clip_vit("ViT-B-32", None) returns, smaller: a random ViT with a 512-wide embedding and
    OpenCLIP's preprocessing settings."""
    vit = VisionTransformer(ViTConfig(image_size=32, patch_size=8, width=32, layers=1, heads=2, output_dim=512))
    vit.preprocess_cfg = {"size": (32, 32), "mean": (0.48145466, 0.4578275, 0.40821073),
                          "std": (0.26862954, 0.26130258, 0.27577711), "interpolation": "bicubic",
                          "resize_mode": "shortest"}
    return vit, None


def test_a_clipcap_captioner_from_its_files(tmp_path, monkeypatch):
    """Captioner.from_clipcap with a checkpoint of ClipCap's layout (CLIP ViT-B-32's 512-wide embedding), GPT-2
    tokenizer files and a random CLIP encoder (offline): captions are text that ends before the full stop."""
    from PIL import Image

    from captioner import Captioner

    tokenizers = pytest.importorskip("tokenizers")
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a dog runs on the grass.", "a man rides a red bike."] * 10, vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(tmp_path))
    torch.manual_seed(0)
    reference = ClipCaptionModel(bpe.get_vocab_size(), clip_dim=512)  # CLIP ViT-B-32's embedding width
    torch.save(reference.state_dict(), tmp_path / "coco_weights.pt")
    monkeypatch.setattr("model.clip.load_clip_vit", small_clip)  # OpenCLIP's ViT-B-32 takes seconds to build
    captioner = Captioner.from_clipcap(tmp_path / "coco_weights.pt", tmp_path, clip_pretrained=None)
    caption = captioner.caption(Image.new("RGB", (64, 48), (200, 30, 30)), max_len=6)
    assert isinstance(caption, str) and "." not in caption
    assert captioner.tokenizer.eos_id == captioner.tokenizer.stoi["."]
