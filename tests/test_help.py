"""Every command's --help explains every flag: one line of meaning each, with its default, taken from the
same comment as the config field it sets; the presets' values are shown beside the defaults."""

import contextlib
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


def test_generate_help_comes_from_decoding_options():
    from captioner.flags import field_comments
    from model.sampling import DecodingOptions

    text = " ".join(help_text(["generate.py"]).split())
    for name, comment in field_comments(DecodingOptions).items():
        assert comment and " ".join(comment.split()) in text, name
