"""Command-line flags built from config dataclasses: one flag per field, and its help is the field's own
trailing comment in the source, so the code and `--help` can never disagree; a comment on a line of its
own above fields can name their group (field_sections)."""

import argparse
import ast
import dataclasses
import inspect
import io
import textwrap
import tokenize


def fields_and_comments(cls):
    """(the field definitions of a dataclass, {line number: (its comment, whether the line holds nothing else)})."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments = {tok.start[0]: (tok.string.lstrip("#").strip(), tok.line.lstrip().startswith("#"))
                for tok in tokenize.generate_tokens(io.StringIO(source).readline) if tok.type == tokenize.COMMENT}
    return [node for node in ast.parse(source).body[0].body if isinstance(node, ast.AnnAssign)], comments


def field_comments(cls):
    """{field name: the comment at the end of its line} of a dataclass, read from its source."""
    nodes, comments = fields_and_comments(cls)
    return {node.target.id: comments.get(node.lineno, ("", False))[0] for node in nodes}


def field_sections(cls):
    """{field name: its section} of a dataclass: the nearest comment above it on a line of its own ("# data"
    above `data: str = ...`), read from its source; "" for a field with none."""
    nodes, comments = fields_and_comments(cls)
    titles = {line: text for line, (text, alone) in comments.items() if alone}
    sections = {}
    for node in nodes:
        above = [line for line in titles if line < node.lineno]
        sections[node.target.id] = titles[max(above)] if above else ""
    return sections


def shown(value):
    """A default as --help prints it: an empty string as "", anything else as itself."""
    return '""' if value == "" else value


def add_dataclass_flags(parser, cls, prefix="", skip=(), defaults=None, notes=None, title=None):
    """Add --PREFIX-FIELD for every field of `cls` except `skip` and nested configs.

    Every flag defaults to None, so the caller can tell which were given. The help is the field's comment,
    then its default (`defaults` overrides the dataclass's) and `notes` (e.g. a preset's value).
    Returns {argparse dest: field name}.
    """
    group = parser.add_argument_group(title) if title else parser
    comments, defaults, notes = field_comments(cls), defaults or {}, notes or {}
    dests = {}
    for f in dataclasses.fields(cls):
        if f.name in skip or dataclasses.is_dataclass(f.type):
            continue
        flag = "--" + (prefix + f.name).replace("_", "-")
        dest = flag[2:].replace("-", "_")
        default = shown(defaults.get(f.name, f.default))
        text = f"{comments[f.name]} (default: {default}{notes.get(f.name, '')})".replace("%", "%%")
        if f.type is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=dest, type=f.type, default=None, metavar=f.type.__name__.upper(), help=text)
        dests[dest] = f.name
    return dests
