"""train.py: exact resume, atomic checkpoints, frozen encoders stay frozen, partial training, caption files."""

import json
import random

import pytest
import torch
from PIL import Image

import train
from data.batches import epoch_batches
from data.tokenizer import tokenizer_from_dict
from model.caption_model import build_caption_model
from model.clip import load_clip_vit

TINY = ["--shapes-train", "256", "--shapes-val", "32", "--shapes-test", "32", "--epochs", "2", "--batch-size", "32",
        "--vit-width", "32", "--vit-layers", "1", "--vit-heads", "2", "--decoder-width", "32", "--decoder-layers", "1",
        "--decoder-heads", "2", "--decoder-dropout", "0.1", "--val-images", "16", "--checkpoint-every", "3",
        "--warmup-steps", "4"]


def run(tmp_path, name, *extra):
    return train.main(TINY + ["--out", str(tmp_path / name), *extra])


def weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("batching", [[], ["--group-by-length"]])
def test_interrupted_and_resumed_run_ends_with_the_same_weights(tmp_path, batching):
    run(tmp_path, "straight", *batching)
    run(tmp_path, "resumed", "--stop-after", "11", *batching)  # 8 steps an epoch: stops inside the second epoch
    halfway = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert halfway["step"] == 11
    train.main(["--out", str(tmp_path / "resumed"), "--resume"])
    a, b = weights(tmp_path / "straight" / "checkpoint.pt"), weights(tmp_path / "resumed" / "checkpoint.pt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    different = run(tmp_path, "other-seed", "--seed", "1", *batching)
    assert not torch.equal(different.state_dict()["decoder.token_embedding.weight"],
                           a["decoder.token_embedding.weight"])


def test_grouping_by_length_uses_each_caption_once_and_cuts_padding():
    rng = random.Random(0)
    pairs = [(i, [1] * rng.randint(3, 40)) for i in range(1000)]  # (image row, token ids) of random lengths
    lengths = torch.tensor([len(ids) for _, ids in pairs])

    def padding(batches):  # share of a padded batch that is not caption
        rows = lengths[batches]  # (steps, B)
        return 1 - rows.sum().item() / (rows.max(dim=1).values.sum().item() * batches.size(1))

    for epoch in (0, 1):
        g, r = epoch_batches(pairs, 32, 0, epoch, group_by_length=True), epoch_batches(pairs, 32, 0, epoch)
        assert g.shape == r.shape == (31, 32)  # 1000 // 32 full batches
        assert len(set(g.flatten().tolist())) == 31 * 32  # no caption twice in an epoch
        assert padding(g) < 0.05 and padding(r) > 0.3
        longest = lengths[g].max(dim=1).values.tolist()
        assert longest != sorted(longest)  # the batches themselves come in random order
    assert torch.equal(epoch_batches(pairs, 32, 0, 0, True), epoch_batches(pairs, 32, 0, 0, True))
    assert not torch.equal(epoch_batches(pairs, 32, 0, 0, True), epoch_batches(pairs, 32, 0, 1, True))


def test_checkpoint_holds_what_generation_needs_and_logs_are_written(tmp_path):
    run(tmp_path, "r")
    state = torch.load(tmp_path / "r" / "checkpoint.pt", weights_only=True)
    assert {"model", "optimizer", "model_config", "train_config", "tokenizer", "step", "rng", "preprocess"} <= set(state)
    assert state["step"] == 16 and state["tokenizer"]["kind"] == "word"
    assert not list((tmp_path / "r").glob("*.tmp"))  # written to a temporary file, then renamed
    records = [json.loads(line) for line in open(tmp_path / "r" / "metrics.jsonl")]
    epochs = [r for r in records if "val_loss" in r]
    expected = {"val_token_accuracy", "val_exact", "val_BLEU-4", "val_CIDEr-D", "val_ROUGE-L", "val_sacreBLEU"}
    assert len(epochs) == 2 and all(expected <= set(r) for r in epochs)
    assert "test_exact" in records[-1]
    assert (tmp_path / "r" / "loss_curve.png").stat().st_size > 1000


@pytest.mark.parametrize("part, trained", [
    ("prefix", lambda n: n.startswith("decoder.prefix.")),
    ("cross_attention", lambda n: n.startswith("decoder.patch_proj.") or (
        n.startswith("decoder.blocks.") and (".cross_attn." in n or ".ln_2." in n))),
])
def test_train_only_changes_nothing_else(tmp_path, part, trained):
    args = ["--decoder-dropout", "0", "--decoder-prefix-mapper", "transformer"]  # its blocks have an ln_2 that must stay put
    model = run(tmp_path, part, "--train-only", part, *args)
    torch.manual_seed(0)  # train.py seeds before building the model, so this is its starting point
    config = train.parse_args(TINY + args)
    untouched = build_caption_model(config.vit, config.decoder, model_tokenizer(tmp_path / part).vocab_size)
    for name, p in model.state_dict().items():
        same = torch.equal(p, untouched.state_dict()[name])
        assert same != trained(name), name


def model_tokenizer(out):
    return tokenizer_from_dict(torch.load(out / "checkpoint.pt", weights_only=True)["tokenizer"])


@pytest.fixture
def photo_folder(tmp_path):
    """Twelve flat-colour 'photos' and a Karpathy caption file naming them, plus one corrupt image."""
    folder = tmp_path / "photos"
    folder.mkdir()
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    images = []
    for i in range(12):
        colour = list(colours)[i % 3]
        Image.new("RGB", (40, 30), colours[colour]).save(folder / f"{i}.jpg")
        split = "train" if i < 9 else "val"
        images.append({"filename": f"{i}.jpg", "split": split,
                       "sentences": [{"raw": f"A {colour} picture."}, {"raw": f"Something {colour}."}]})
    (folder / "12.jpg").write_bytes(b"not a jpeg")
    images.append({"filename": "12.jpg", "split": "train", "sentences": [{"raw": "A broken picture."}]})
    captions = tmp_path / "dataset.json"
    captions.write_text(json.dumps({"images": images}))
    return folder, captions


def test_frozen_clip_encoder_stays_frozen(photo_folder, tmp_path, capsys):
    folder, captions = photo_folder
    args = ["--data", str(captions), "--images", str(folder), "--encoder", "clip", "--clip-model", "ViT-S-32",
            "--clip-pretrained", "none", "--feature-cache", str(tmp_path / "cache"), "--decoder-width", "32",
            "--decoder-layers", "1", "--decoder-heads", "2", "--epochs", "3", "--batch-size", "6", "--warmup-steps", "1", "--out", str(tmp_path / "c")]
    model = train.main(args)
    assert "12.jpg: not an image file" in capsys.readouterr().out  # reported by name, skipped, run goes on
    torch.manual_seed(0)  # train.py seeds before building the random-weight CLIP, so this is the same tower
    original, _ = load_clip_vit("ViT-S-32", None)
    for name, p in model.encoder.state_dict().items():
        assert torch.equal(p, original.state_dict()[name]), name
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert not model.encoder.training
    saved = torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)
    assert saved["model_config"]["frozen_encoder"] and "encoder.proj" in saved["model"]
    cache_folders = list((tmp_path / "cache").iterdir())
    train.main(args)  # a second run reuses the cache
    assert list((tmp_path / "cache").iterdir()) == cache_folders


def test_scratch_encoder_on_a_caption_file(photo_folder, tmp_path):
    folder, captions = photo_folder
    model = run(tmp_path, "s", "--data", str(captions), "--images", str(folder), "--epochs", "30",
                "--batch-size", "6", "--lr", "3e-3", "--decoder-dropout", "0")
    records = [json.loads(line) for line in open(tmp_path / "s" / "metrics.jsonl")]
    assert records[-1]["val_exact"] == 1.0  # three colours: the captioner learns them
    assert model.encoder is not None and any(p.requires_grad for p in model.encoder.parameters())


def test_missing_images_stop_the_run_with_a_count(photo_folder, tmp_path):
    folder, captions = photo_folder
    (folder / "3.jpg").unlink()
    with pytest.raises(SystemExit, match=r"1 of 13 captioned images are missing \(first: 3.jpg\)"):
        run(tmp_path, "m", "--data", str(captions), "--images", str(folder))


def test_the_main_job_captions_the_test_split_almost_perfectly(shapes_run):
    """The README's claim for `python train.py`: at least 99% of the 1,000 test scenes captioned exactly."""
    final = json.loads((shapes_run / "metrics.jsonl").read_text().splitlines()[-1])
    assert final["test_exact"] >= 0.99, final


def two_equal_tiny_models_and_a_batch(B=16, T=10):
    """Two identical tiny captioners (images 16 x 16, vocabulary 20, no dropout) and one batch whose
    captions run from 2 to 10 tokens."""
    from model.decoder import DecoderConfig
    from model.vit import ViTConfig

    torch.manual_seed(0)
    vit = ViTConfig(image_size=16, patch_size=8, width=32, layers=1, heads=2)
    models = [build_caption_model(vit, DecoderConfig(width=32, layers=1, heads=2, prefix_len=2, max_len=12,
                                                     dropout=0.0), 20) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    lengths = torch.tensor([2 + i % 9 for i in range(B)])  # captions from 2 to 10 tokens
    tokens = torch.randint(3, 20, (B, T))
    targets = torch.randint(3, 20, (B, T)).masked_fill(torch.arange(T) >= lengths[:, None], -100)
    return models, ({"images": torch.randn(B, 3, 16, 16)}, tokens, targets, lengths)


def test_gradient_accumulation_takes_the_step_of_one_big_batch():
    """Four micro-batches, one after another, give the weights one batch of all their rows gives, even
    though the rows' captions differ in length (so a mean of the micro-batches' means would not)."""
    from training.step import micro_batches, train_step

    models, batch = two_equal_tiny_models_and_a_batch()
    losses = []
    for model, accumulate in zip(models, (1, 4)):
        params = [p for p in model.parameters()]
        optimizer = torch.optim.SGD(params, lr=1.0)  # weights move by the gradient itself (Adam's first step
        losses.append(train_step(model, optimizer, params, batch, lr=1.0, accumulate=accumulate))  # is its sign)
    torch.testing.assert_close(losses[1], losses[0])
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6, msg=name)
    parts = micro_batches(batch, 4)
    assert [len(p[1]) for p in parts] == [4, 4, 4, 4]
    counts = [(p[2] != -100).sum().item() for p in parts]
    assert len(set(counts)) > 1  # the parts hold different numbers of tokens: the normalisation matters


def test_the_float16_gradient_scaler_takes_the_same_step_and_skips_an_overflowing_one():
    """What a GPU without bfloat16 (a Colab T4) trains with, run here in float32 on the CPU: scaling the loss
    by 2^16 and the gradients back changes no weight; a scale that overflows the gradients to inf skips the
    step (no weight changes, so no NaN reaches them) and halves the scale."""
    from training.step import train_step

    models, batch = two_equal_tiny_models_and_a_batch()
    start = {name: p.detach().clone() for name, p in models[0].named_parameters()}
    for model, scaler in zip(models, (None, torch.amp.GradScaler("cpu", init_scale=2.0**16))):
        params = list(model.parameters())
        train_step(model, torch.optim.AdamW(params), params, batch, lr=1e-2, scaler=scaler)
    for (name, a), b in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7, msg=name)
    before = {name: p.detach().clone() for name, p in models[1].named_parameters()}
    assert all(not torch.equal(start[name], p) for name, p in before.items())  # the step moved every weight
    params = list(models[1].parameters())
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # a loss of 3 times that overflows float32 (2^128)
    loss = train_step(models[1], torch.optim.AdamW(params), params, batch, lr=1e-2, scaler=scaler)
    assert torch.isfinite(loss)  # the loss reported is unscaled
    for name, p in models[1].named_parameters():
        assert torch.equal(p, before[name]), name
    assert scaler.get_scale() == 2.0**126


def test_the_best_model_is_kept_and_patience_stops_a_run_that_no_longer_improves(tmp_path):
    """With a learning rate of 0 nothing improves after the first validation: patience 1 stops the run
    after the second epoch of four, and OUT/best/ holds the first epoch's (here: the same) model."""
    out = tmp_path / "flat"
    run(tmp_path, "flat", "--epochs", "4", "--lr", "0", "--patience", "1", "--best-metric", "loss")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    validations = [r for r in records if "val_loss" in r]
    assert len(validations) == 2 and validations[0]["best"] and "best" not in validations[1]
    assert records[-1]["step"] == validations[-1]["step"] == 2 * (256 // 32)  # two epochs of four
    assert sorted(p.name for p in (out / "best").iterdir()) == ["config.json", "model.safetensors"]


def test_the_best_model_follows_the_best_validation(tmp_path):
    out = tmp_path / "learning"
    run(tmp_path, "learning", "--epochs", "3", "--best-metric", "exact")
    validations = [r for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines()) if "val_loss" in r]
    best_epoch = max(range(3), key=lambda i: (validations[i]["val_exact"], -i))  # the first of equal scores
    assert [bool(v.get("best")) for v in validations][best_epoch] is True
    from safetensors.torch import load_file
    best = load_file(out / "best" / "model.safetensors")
    if best_epoch == 2:  # the last epoch was best: OUT/best and OUT/model hold the same weights
        assert all(torch.equal(v, load_file(out / "model" / "model.safetensors")[k]) for k, v in best.items())
    with pytest.raises(SystemExit):
        train.main(TINY + ["--out", str(tmp_path / "x"), "--best-metric", "accuracy"])


def test_mixed_precision_is_bfloat16_where_the_gpu_has_it_and_float16_where_not(monkeypatch):
    """The choice alone (faked GPUs); tests/test_gpu.py trains with each where a GPU exists."""
    from training.step import autocast_dtype

    for has_bf16, expected in [(True, torch.bfloat16), (False, torch.float16)]:  # an A100; a Colab T4
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: has_bf16)
        assert autocast_dtype(torch.device("cuda")) == expected
        assert autocast_dtype(torch.device("cuda"), amp=False) is None
    assert autocast_dtype(torch.device("cpu")) is None and autocast_dtype(torch.device("mps")) is None


def test_compile_trains_the_same_weights_and_checkpoints_the_plain_model(tmp_path, monkeypatch):
    """--compile runs the steps through torch.compile. Inductor's C++ build takes about 40 s on a cold
    CPU, too long for this suite, so here the graphs TorchDynamo captures run with the "aot_eager"
    backend (the same tracing and autograd graphs, not compiled to C++); tests/test_gpu.py compiles
    for real on a GPU."""
    run(tmp_path, "eager", "--stop-after", "4", "--decoder-dropout", "0")
    graphs, real_compile = [], torch.compile

    def aot_eager_that_counts(graph, example_inputs):  # a TorchDynamo backend: gets each captured graph
        graphs.append(graph)
        return torch._dynamo.lookup_backend("aot_eager")(graph, example_inputs)

    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend=aot_eager_that_counts))
    run(tmp_path, "compiled", "--stop-after", "4", "--decoder-dropout", "0", "--compile")
    assert graphs  # the training steps ran through captured graphs
    eager, compiled = (torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["model"]
                       for name in ("eager", "compiled"))
    assert eager.keys() == compiled.keys()  # no "_orig_mod." prefix: the plain model's names
    from tests.test_distributed import assert_same_weights

    assert_same_weights(eager, compiled)


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default(tmp_path):
    run(tmp_path, "old", "--stop-after", "3")
    path = tmp_path / "old" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    for name in ("compile", "student_code", "grad_accum"):  # settings added after the first checkpoints
        del state["train_config"][name]
    torch.save(state, path)
    train.main(["--out", str(tmp_path / "old"), "--resume"])
    assert torch.load(path, weights_only=True)["step"] == 16
