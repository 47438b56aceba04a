"""Every command's --help explains every flag: one line of meaning each, with its default, taken from the
same comment as the config field it sets; the presets' values are shown beside the defaults."""

import contextlib
import dataclasses
import importlib
import io

import pytest

COMMANDS = [["train.py"], ["generate.py"], ["evaluate.py"], ["serve.py"], ["-m", "captioner.convert"]]


def help_text(command):
    """What `python COMMAND --help` prints, 200 columns wide, run in-process (each command's main(argv))."""
    module = importlib.import_module(command[-1].removesuffix(".py"))
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_status:
        patch.setenv("COLUMNS", "200")
        module.main(["--help"])
    assert exit_status.value.code == 0
    return out.getvalue()


def flag_lines(text):
    """{flag: its help} from argparse's listing: an entry starts with "  -FLAG [METAVAR]", two or more
    spaces, then the help, which may also begin on the following, more indented lines."""
    flags, current = {}, None
    for line in text.splitlines():
        if line.startswith("  -"):
            invocation, _, explanation = line.strip().partition("  ")
            current = invocation.split(",")[-1].split()[0]
            flags[current] = explanation.strip()
        elif current and line.startswith("    ") and line.strip():
            flags[current] = (flags[current] + " " + line.strip()).strip()
        else:
            current = None
    return flags


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: c[-1])
def test_every_flag_is_explained(command):
    text = help_text(command)
    assert "python " in text.split("options:")[0]  # examples at the top
    flags = flag_lines(text)
    assert len(flags) >= 2
    for flag, explanation in flags.items():
        meaning = explanation.split("(default")[0]
        words = [w for w in meaning.split() if any(ch.isalpha() for ch in w)]
        assert len(words) >= 3, f"{command[-1]} {flag}: {explanation!r}"


def test_train_help_comes_from_the_config_comments_with_preset_values():
    from training.config import PRESETS, TrainConfig

    text = help_text(["train.py"])
    tiny, flickr, gpt2 = TrainConfig().batch_size, PRESETS["flickr30k"]["batch_size"], PRESETS["flickr30k-gpt2"]["batch_size"]
    assert tiny != flickr  # so the line below shows the values
    assert f"captions per step (default: {tiny}; flickr30k: {flickr}; flickr30k-gpt2: {gpt2})" in " ".join(text.split())
    assert "--decoder-layers INT number of decoder blocks (default: 2)" in " ".join(text.split())  # DecoderConfig.layers
    assert "--vit-patch-size" in text and "--decoder-vocab-size" not in text  # derived fields are not flags


# Every spelling of train.py's own flags, as --help listed them before they were grouped by purpose: a user's
# command lines and scripts use these names, so grouping must not lose, add or rename one.
TRAIN_FLAGS = """
    --data --images --skip-missing --no-skip-missing --shapes-train --shapes-val --shapes-test
    --train-on-all-references --no-train-on-all-references --encoder --clip-model --clip-pretrained
    --feature-cache --tokenizer --gpt2 --download --no-download --min-count --train-only --epochs
    --group-by-length --no-group-by-length --batch-size --lr --weight-decay --warmup-steps --grad-clip
    --grad-accum --label-smoothing --compile --no-compile --amp --no-amp --seed --device --val-images --out
    --checkpoint-every --best-metric --patience --resume --no-resume --stop-after --progress-every --tensorboard
    --no-tensorboard --student-code --student-dir --vit-image-size --vit-patch-size --vit-width --vit-layers
    --vit-heads --vit-mlp-ratio --vit-quick-gelu --no-vit-quick-gelu --vit-fused --no-vit-fused
    --vit-sincos-init --no-vit-sincos-init --vit-patch-bias --no-vit-patch-bias --vit-ln-pre --no-vit-ln-pre
    --vit-norm-eps --vit-class-token-in-memory --no-vit-class-token-in-memory --decoder-max-len --decoder-width
    --decoder-layers --decoder-heads --decoder-mlp-ratio --decoder-prefix-len --decoder-prefix-mapper
    --decoder-mapper-layers --decoder-cross-attention --no-decoder-cross-attention --decoder-dropout
    --decoder-fused --no-decoder-fused --decoder-gelu --decoder-patch-proj --decoder-gpt-prefix
    --no-decoder-gpt-prefix
""".split()
PURPOSES = ("data", "model", "optimisation", "validation", "run", "logging")  # "model: the decoder" is a model group


def help_groups(text):
    """{group title: every spelling of its flags (--amp and --no-amp)} from argparse's listing, "options" first."""
    groups, title = {}, None
    for line in text[text.index("\noptions:\n"):].splitlines():
        if line and not line.startswith(" ") and line.endswith(":"):
            title = line.removesuffix(":")
            groups[title] = []
        elif title and line.startswith("  -"):
            invocation = line.strip().partition("  ")[0]  # "--amp, --no-amp" or "--lr FLOAT"
            groups[title] += [spelling.split()[0] for spelling in invocation.split(", ")]
    return groups


def test_train_flags_are_grouped_by_purpose_each_once_and_the_same_as_before():
    groups = help_groups(help_text(["train.py"]))
    assert groups.pop("options") == ["-h", "--help", "--preset", "--config"]  # where a run's settings start from
    assert [title for title in groups if title.split(":")[0] not in PURPOSES] == []
    assert {title.split(":")[0] for title in groups} == set(PURPOSES)
    flags = [flag for group in groups.values() for flag in group]
    assert sorted(flags) == sorted(TRAIN_FLAGS)  # none lost, added or renamed, and none in two groups
    assert "--vit-width" in groups["model: the scratch ViT (--encoder scratch)"]  # a nested config's own group
    assert "--decoder-layers" in groups["model: the decoder"]
    assert "--student-code" in groups["model: your own code (exercises/README.md)"]
    assert "--lr" in groups["optimisation"] and "--seed" in groups["run"] and "--tensorboard" in groups["logging"]


@dataclasses.dataclass
class Sectioned:
    first: int = 0  # before any section
    # speed
    lr: float = 1.0  # a comment after a field is its help, not a section
    steps: int = 2
    # output
    out: str = ""


def test_a_section_is_the_comment_on_a_line_of_its_own_above_fields():
    from captioner.flags import field_comments, field_sections

    assert field_sections(Sectioned) == {"first": "", "lr": "speed", "steps": "speed", "out": "output"}
    assert field_comments(Sectioned) == {"first": "before any section", "steps": "", "out": "",
                                         "lr": "a comment after a field is its help, not a section"}


def test_generate_help_comes_from_decoding_options():
    from captioner.flags import field_comments
    from model.sampling import DecodingOptions

    text = " ".join(help_text(["generate.py"]).split())
    for name, comment in field_comments(DecodingOptions).items():
        assert comment and " ".join(comment.split()) in text, name
