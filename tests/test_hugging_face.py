"""Hugging Face checkpoints in our own modules, proven equal to `transformers` (a test-only dependency) on
small random configurations the tests build and save themselves: nothing is downloaded."""

import pytest
import torch

from model import hugging_face
from model.caption_model import CaptionModel
from model.hugging_face import (
    HuggingFaceError,
    load_gpt2_decoder,
    load_vit,
    vision_encoder_decoder,
)
from model.sampling import DecodingOptions

transformers = pytest.importorskip("transformers")

# Weights of std 0.3 (not 0.02) give the random models peaked, varied next-token choices.
TINY_GPT2 = dict(initializer_range=0.3, vocab_size=61, n_positions=32, n_embd=24, n_layer=2, n_head=3, resid_pdrop=0.0, embd_pdrop=0.0,
                 attn_pdrop=0.0, bos_token_id=60, eos_token_id=60)
TINY_VIT = dict(initializer_range=0.3, image_size=32, patch_size=8, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                intermediate_size=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def saved(model, folder):
    """save_pretrained into a folder, as a user's download or their own fine-tune would be."""
    model.save_pretrained(folder)
    return folder


def gpt2(tmp_path, cross_attention):
    torch.manual_seed(0)
    config = transformers.GPT2Config(**TINY_GPT2, add_cross_attention=cross_attention)
    theirs = transformers.GPT2LMHeadModel(config).eval()
    return theirs, load_gpt2_decoder(saved(theirs, tmp_path / "gpt2"))


@pytest.mark.parametrize("cross_attention", [False, True], ids=["gpt2", "gpt2+cross-attention"])
def test_our_gpt2_equals_gpt2lmheadmodel(tmp_path, cross_attention):
    theirs, ours = gpt2(tmp_path, cross_attention)
    tokens = torch.randint(0, 61, (2, 9))
    memory = torch.randn(2, 5, 24) if cross_attention else None
    with torch.no_grad():
        expected = theirs(tokens, encoder_hidden_states=memory).logits
        got = ours(tokens, None, memory).logits
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_our_gpt2_with_a_kv_cache_equals_gpt2_token_by_token(tmp_path):
    theirs, ours = gpt2(tmp_path, cross_attention=True)
    tokens, memory = torch.randint(0, 61, (2, 7)), torch.randn(2, 5, 24)
    cache, past = ours.new_cache(), None
    with torch.no_grad():
        for t in range(7):
            step = tokens[:, t : t + 1]
            out = theirs(step, encoder_hidden_states=memory, past_key_values=past, use_cache=True)
            past = out.past_key_values
            torch.testing.assert_close(ours(step, None, memory, cache=cache).logits, out.logits, rtol=1e-5, atol=1e-5)


def test_our_vit_equals_vitmodel(tmp_path):
    torch.manual_seed(0)
    theirs = transformers.ViTModel(transformers.ViTConfig(**TINY_VIT), add_pooling_layer=False).eval()
    ours = load_vit(saved(theirs, tmp_path / "vit"))
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(images).tokens, theirs(images).last_hidden_state, rtol=1e-5, atol=1e-5)


def vit_gpt2(tmp_path):
    torch.manual_seed(0)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.ViTConfig(**TINY_VIT), transformers.GPT2Config(**TINY_GPT2))
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 60
    theirs = transformers.VisionEncoderDecoderModel(config=config).eval()
    ours, _ = vision_encoder_decoder(saved(theirs, tmp_path / "vit-gpt2"))
    return theirs, ours


def test_a_vit_gpt2_keeps_64_of_gpt2s_positions_and_still_equals_it(tmp_path):
    """GPT-2's 1,024 positions are cut to 64: decoding with no max_len stops after 63 new tokens, not 1,023."""
    torch.manual_seed(0)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.ViTConfig(**TINY_VIT), transformers.GPT2Config(**dict(TINY_GPT2, n_positions=1024)))
    theirs = transformers.VisionEncoderDecoderModel(config=config).eval()
    ours, _ = vision_encoder_decoder(saved(theirs, tmp_path / "long"))
    assert ours.decoder.config.max_len == ours.decoder.positional_embedding.shape[0] == 64
    images, tokens = torch.randn(1, 3, 32, 32), torch.randint(0, 61, (1, 20))
    with torch.no_grad():
        expected = theirs(pixel_values=images, decoder_input_ids=tokens).logits
        torch.testing.assert_close(ours(tokens, images=images).logits, expected, rtol=1e-5, atol=1e-5)
    assert ours.generate(59, 59, images=images)[0].shape[1] <= 63


def test_our_vit_gpt2_equals_visionencoderdecodermodel(tmp_path):
    theirs, ours = vit_gpt2(tmp_path)
    assert isinstance(ours, CaptionModel)
    images, tokens = torch.randn(2, 3, 32, 32), torch.randint(0, 61, (2, 6))
    with torch.no_grad():
        expected = theirs(pixel_values=images, decoder_input_ids=tokens).logits
        torch.testing.assert_close(ours(tokens, images=images).logits, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("beam", [1, 3], ids=["greedy", "beam 3"])
def test_our_sampler_captions_like_generate_token_for_token(tmp_path, beam):
    theirs, ours = vit_gpt2(tmp_path)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = theirs.generate(pixel_values=images, max_new_tokens=12, num_beams=beam, do_sample=False,
                                   length_penalty=1.0, early_stopping=True if beam > 1 else False)[:, 1:]
    got = ours.generate(60, 60, images=images, options=DecodingOptions(beam=beam, max_len=12))[0]
    assert len({tuple(row) for row in expected.tolist()}) == 3  # three different captions: a test that can fail
    for want, have in zip(expected.tolist(), got.tolist()):
        n = want.index(60) + 1 if 60 in want else len(want)  # up to and with the end token
        assert have[:n] == want[:n]


def test_folders_that_are_not_what_the_loader_expects_get_one_line(tmp_path):
    theirs, _ = gpt2(tmp_path, cross_attention=False)
    with pytest.raises(HuggingFaceError, match=r"gpt2/config.json: model_type is 'gpt2', not 'vision-encoder-decoder'"):
        vision_encoder_decoder(tmp_path / "gpt2")
    with pytest.raises(HuggingFaceError, match=r"gpt2/config.json: model_type is 'gpt2', not 'vit'"):
        load_vit(tmp_path / "gpt2")
    with pytest.raises(HuggingFaceError, match=r"nothing/config.json does not exist"):
        load_gpt2_decoder(tmp_path / "nothing")
    (tmp_path / "gpt2" / "model.safetensors").unlink()
    with pytest.raises(HuggingFaceError, match=r"gpt2: no model.safetensors or pytorch_model.bin"):
        load_gpt2_decoder(tmp_path / "gpt2")
    smaller = transformers.GPT2LMHeadModel(transformers.GPT2Config(**dict(TINY_GPT2, n_embd=12)))
    saved(smaller, tmp_path / "small")
    config = (tmp_path / "small" / "config.json").read_text().replace('"n_embd": 12', '"n_embd": 24')
    (tmp_path / "small" / "config.json").write_text(config)
    with pytest.raises(HuggingFaceError, match=r"small: the weights do not fit the config: positional_embedding "
                                               r"is \(32, 12\) in the file, \(32, 24\) in the configuration"):
        load_gpt2_decoder(tmp_path / "small")


def vit_gpt2_folder(tmp_path):
    """A complete ViT-GPT2 captioner folder in nlpconnect/vit-gpt2-image-captioning's layout, small and random:
    the model, a GPT-2 tokenizer (vocab.json, merges.txt) and the image processor's settings."""
    tokenizers = pytest.importorskip("tokenizers")
    folder = tmp_path / "vit-gpt2-image-captioning"
    folder.mkdir()
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a dog runs on the grass", "a man rides a red bike"] * 10, vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))
    vocab = bpe.get_vocab_size()
    torch.manual_seed(0)
    config = transformers.VisionEncoderDecoderConfig.from_encoder_decoder_configs(
        transformers.ViTConfig(**TINY_VIT), transformers.GPT2Config(**dict(TINY_GPT2, vocab_size=vocab, bos_token_id=0,
                                                                             eos_token_id=0)))
    config.decoder_start_token_id = config.pad_token_id = config.eos_token_id = 0  # <|endoftext|>
    model = transformers.VisionEncoderDecoderModel(config=config).eval()
    model.save_pretrained(folder)
    transformers.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder, model


def test_a_vit_gpt2_folder_captions_through_our_api_as_transformers_does(tmp_path):
    """What the README's line does with nlpconnect/vit-gpt2-image-captioning, on a small random copy: the
    caption equals Hugging Face's own pipeline (processor, generate, decode), and survives our save/load."""
    from PIL import Image

    from captioner import Captioner

    folder, model = vit_gpt2_folder(tmp_path)
    images = [Image.fromarray(torch.randint(0, 255, (40, 50, 3), dtype=torch.uint8).numpy()) for _ in range(2)]
    processor = transformers.ViTImageProcessor.from_pretrained(folder)
    tokenizer = transformers.GPT2Tokenizer.from_pretrained(folder)
    with torch.no_grad():
        ids = model.generate(pixel_values=processor(images, return_tensors="pt").pixel_values, max_new_tokens=10)
    expected = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    assert all(expected) and expected[0] != expected[1]
    captioner = Captioner.from_pretrained(folder)
    assert captioner.caption(images, max_len=10) == expected
    result = captioner.caption(images[0], attention=True, max_len=10)  # where a real model looks, word by word
    assert result.cross_attention.shape[-2:] == (4, 4)  # the class token's column left out of the picture
    captioner.save_pretrained(tmp_path / "ours")
    assert Captioner.from_pretrained(tmp_path / "ours").caption(images, max_len=10) == expected


def test_a_hub_name_is_not_downloaded_unless_asked(tmp_path, monkeypatch):
    from captioner import Captioner
    from model.checkpoint import CheckpointError

    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match=r"downloaded only when asked: download=True, or --download"):
        Captioner.from_pretrained("nlpconnect/vit-gpt2-image-captioning")


def test_generate_py_captions_and_draws_with_a_vit_gpt2_folder(tmp_path):
    from PIL import Image

    import generate

    folder, _ = vit_gpt2_folder(tmp_path)
    Image.new("RGB", (48, 40), (30, 120, 200)).save(tmp_path / "photo.png")
    results = generate.main([str(folder), str(tmp_path / "photo.png"), "--beam", "2", "--max-len", "8",
                             "--attention", str(tmp_path / "pictures")])
    assert results[0]["captions"][0] and (tmp_path / "pictures" / "photo.png").exists()


def test_training_from_gpt2_with_fresh_cross_attention(tmp_path, capsys, monkeypatch):
    """Seed 003's recipe on the built-in data: a GPT-2 folder starts the decoder (and gives the tokenizer),
    cross-attention is new, and --train-only cross_attention changes nothing of GPT-2's own weights. The
    weights file is read once (checked against the config, then loaded)."""
    import train
    from tests.test_train import TINY

    tokenizers = pytest.importorskip("tokenizers")
    from data.shapes import make_split

    folder = tmp_path / "distilgpt2"
    folder.mkdir()
    bpe = tokenizers.ByteLevelBPETokenizer()
    bpe.train_from_iterator([c for s in make_split("train", 200, 32) for c in s.captions], vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save_model(str(folder))
    torch.manual_seed(0)
    gpt = transformers.GPT2LMHeadModel(transformers.GPT2Config(**dict(TINY_GPT2, vocab_size=bpe.get_vocab_size(),
                                                                      initializer_range=0.02)))
    saved(gpt, folder)
    out, reads, real_read = tmp_path / "run", [], hugging_face.read_weights
    monkeypatch.setattr(hugging_face, "read_weights", lambda folder: reads.append(folder) or real_read(folder))
    train.main(TINY + ["--gpt2", str(folder), "--train-only", "cross_attention", "--stop-after", "4", "--out", str(out)])
    assert len(reads) == 1
    weights = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    theirs = gpt.state_dict()
    torch.testing.assert_close(weights["decoder.token_embedding.weight"], theirs["transformer.wte.weight"], rtol=0, atol=0)
    torch.testing.assert_close(weights["decoder.blocks.1.mlp.c_fc.weight"], theirs["transformer.h.1.mlp.c_fc.weight"].t(),
                               rtol=0, atol=0)
    assert weights["decoder.positional_embedding"].shape[0] == 4 + 16  # prefix + caption, not all 32 of GPT-2
    assert "decoder.blocks.0.cross_attn.in_proj_weight" in weights
    assert "new, trained from scratch: cross_attn, ln_2, patch_proj, prefix" in capsys.readouterr().out
    (folder / "model.safetensors").unlink()  # a resumed run takes its weights from the checkpoint alone
    train.main(["--out", str(out), "--resume"])
    assert torch.load(out / "checkpoint.pt", weights_only=True)["step"] == 16
    with pytest.raises(SystemExit):
        train.parse_args(["--preset", "flickr30k-gpt2", "--data", "x.json", "--images", "x/"])
    assert "the flickr30k-gpt2 preset needs --gpt2 FOLDER" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a hub name is downloaded only when asked
        train.parse_args(["--gpt2", "distilgpt2"])
    assert "--gpt2 distilgpt2: no such folder; add --download to fetch it" in capsys.readouterr().err


def test_a_hostile_pytorch_model_bin_or_clipcap_file_is_refused_and_never_runs(tmp_path):
    """The older Hugging Face weights file and ClipCap's checkpoints are pickles: read weights-only, one
    carrying an object that would write a file is refused in one line, and the file is never written."""
    from model.clipcap import load_clipcap_decoder
    from tests.test_model_files import WritesAFile

    theirs, _ = gpt2(tmp_path, cross_attention=False)
    folder, marker = tmp_path / "gpt2", tmp_path / "marker.txt"
    state = dict(theirs.state_dict(), extra=WritesAFile(marker))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    with pytest.raises(HuggingFaceError, match=r"pytorch_model.bin: refused: it holds Python objects that could run code"):
        load_gpt2_decoder(folder)
    torch.save(state, tmp_path / "clipcap.pt")
    with pytest.raises(HuggingFaceError, match=r"clipcap.pt: refused: it holds Python objects that could run code"):
        load_clipcap_decoder(tmp_path / "clipcap.pt")
    assert not marker.exists()
    torch.save(theirs.state_dict(), folder / "pytorch_model.bin")  # the same weights, plain: they load
    assert load_gpt2_decoder(folder).config.layers == 2


def test_the_page_serves_a_vit_gpt2_folder(tmp_path):
    """serve.py's API on a ViT-GPT2 folder: the captions of the Python API, and attention over the patch grid
    (the class token, which the decoder also reads, is not a square of the picture)."""
    import io

    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient
    from PIL import Image

    from captioner import Captioner
    from server.app import create_app

    folder, _ = vit_gpt2_folder(tmp_path)
    captioner = Captioner.from_pretrained(folder)
    client = TestClient(create_app(captioner, name="vit-gpt2"), base_url="http://127.0.0.1")
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 90)).save(buffer, format="PNG")
    answer = client.post("/api/caption", files={"image": ("photo.png", buffer.getvalue(), "image/png")},
                         data={"max_len": "8"}).json()
    assert answer["captions"] == [captioner.caption(Image.open(buffer), max_len=8)]
    attention = answer["attention"]
    assert (len(attention), len(attention[0][0][0]), len(attention[0][0][0][0])) == (2, 4, 4)  # layers, grid, grid


@pytest.mark.parametrize("files, wanted", [(["model.safetensors", "pytorch_model.bin", "tf_model.h5"], "*.safetensors"),
                                           (["pytorch_model.bin", "tf_model.h5", "flax_model.msgpack"],
                                            "pytorch_model.bin")])
def test_a_download_fetches_one_copy_of_the_weights(tmp_path, monkeypatch, files, wanted):
    """nlpconnect/vit-gpt2-image-captioning ships pytorch_model.bin and TensorFlow and Flax copies: download=True
    fetches the configs, the tokenizer files and one PyTorch copy (the hub itself is replaced here)."""
    import types

    from captioner.api import hub_download

    asked = {}
    fake = types.SimpleNamespace(list_repo_files=lambda name: files + ["config.json", "vocab.json"],
                                 snapshot_download=lambda name, allow_patterns: asked.update(patterns=allow_patterns)
                                 or str(tmp_path))
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", fake)
    assert hub_download("nlpconnect/vit-gpt2-image-captioning") == tmp_path
    assert asked["patterns"] == ["*.json", "*.txt", wanted]


@pytest.mark.parametrize("n_layer, message", [(10**6, "layers must be a number from 1 to 128, not 1000000"),
                                              (100, "the weights lack decoder.transformer.h.2")])
def test_a_vit_gpt2_config_asking_for_more_layers_than_its_weights_is_refused_before_allocating(tmp_path, n_layer,
                                                                                               message):
    """A ViT-GPT2 folder whose config.json says n_layer = 10**6 (or 100, within the limits, while the weights
    hold 2): refused in one line naming the folder, in a fresh process whose peak memory stays small."""
    import json

    from test_model_files_hostile import SAFE_PEAK_GB, load_in_child

    folder, _ = vit_gpt2_folder(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["decoder"]["n_layer"] = n_layer
    (folder / "config.json").write_text(json.dumps(config))
    line, peak = load_in_child(folder)
    assert line.startswith(f"refused: {folder}") and message in line and peak < SAFE_PEAK_GB, (line, peak)
