"""Write docs/reference/configuration.md from configs/: every entry point, config group, option
and key, with the value the file sets and the meaning its YAML comments give.

    python scripts/config_reference.py           # (re)write the page
    python scripts/config_reference.py --check   # exit 1 if the committed page is out of date

A key's meaning is the comment block above it and its end-of-line comment; a key without either
takes the comment the same key has in another file of its group, else it is shown as an argument
of the `_target_` its mapping builds. Options that build on another file
(`defaults:` naming a sibling) list only the keys they set, as the files do.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
PAGE = ROOT / "docs" / "reference" / "configuration.md"
ENTRY_POINTS = {"train": "src/f2llm/train.py", "eval": "src/f2llm/eval.py",
                "merge": "src/f2llm/merge.py", "mine": "src/f2llm/mine.py"}
# Hydra's own keys: what builds an object, not settings a user changes.
BUILD_KEYS = ("_target_", "_partial_", "_recursive_")
# Groups (or single options) whose keys go under another key than the group's path.
PACKAGES = {"hydra/launcher": "hydra.launcher", "callbacks/pruning": "callbacks.pruning"}

_KEY = re.compile(r"^(?P<indent>\s*)(?P<key>[A-Za-z_][\w@./-]*)\s*:(?P<rest>.*)$")


@dataclass
class Key:
    path: str  # dotted, relative to the file's package
    value: Any
    meaning: str
    mapping: bool = False  # a mapping (shown only when commented; its keys are rows of their own)
    target: str | None = None  # the `_target_` of the mapping holding the key


@dataclass
class Option:
    """One YAML file of a group (or an entry point's primary config)."""

    name: str
    file: Path
    header: str
    defaults: list[Any] = field(default_factory=list)
    builds: str | None = None
    keys: list[Key] = field(default_factory=list)
    global_package: bool = False


def split_comment(text: str) -> tuple[str, str]:
    """(text before an end-of-line `# comment`, the comment), quotes respected."""
    quote = None
    for i, ch in enumerate(text):
        if quote:
            quote = None if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (i == 0 or text[i - 1].isspace()):
            return text[:i].rstrip(), text[i + 1:].strip()
    return text.rstrip(), ""


def comment_lines(lines: list[str]) -> str:
    return " ".join(line.strip().lstrip("#").strip() for line in lines).strip()


def parse(file: Path) -> Option:
    """The file's header comment, its defaults list and every key with its comment."""
    text = file.read_text()
    data = yaml.safe_load(text) or {}
    lines = text.splitlines()
    header: list[str] = []
    i = 0
    while i < len(lines) and lines[i].lstrip().startswith("#"):
        if lines[i].strip() != "# @package _global_":
            header.append(lines[i])
        i += 1
    option = Option(file.stem, file, comment_lines(header),
                    global_package="# @package _global_" in lines[:1])
    option.defaults = list(data.get("defaults") or [])
    option.builds = data.get("_target_")

    pending: list[str] = []
    stack: list[tuple[int, str]] = []  # (indent, key) of the enclosing mappings
    in_list: int | None = None  # indent of the list items being skipped (part of a value)
    for line in lines[i:]:
        stripped = line.strip()
        if not stripped:
            pending = []
            continue
        if stripped.startswith("#"):
            pending.append(stripped)
            continue
        indent = len(line) - len(line.lstrip())
        if stripped.startswith("-"):
            in_list = indent if in_list is None else min(in_list, indent)
            pending = []
            continue
        if in_list is not None and indent > in_list:
            continue  # a key of a mapping inside a list item
        in_list = None
        match = _KEY.match(line)
        if not match:
            pending = []  # a continuation: part of a value above
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        key = match["key"]
        path = [k for _, k in stack] + [key]
        value = lookup(data, path)
        before, inline = split_comment(match["rest"])
        meaning = " ".join(p for p in (comment_lines(pending), inline) if p)
        pending = []
        mapping = isinstance(value, dict) and not before
        if mapping:
            stack.append((indent, key))
        if key == "defaults" or key in BUILD_KEYS or (mapping and not meaning):
            continue
        option.keys.append(Key(".".join(path), value, meaning, mapping=mapping,
                               target=lookup(data, [*path[:-1], "_target_"])))
    return option


def lookup(data: Any, path: list[str]) -> Any:
    for part in path:
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def show(value: Any) -> str:
    """A value as it is typed on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if value else '""'
    if isinstance(value, (dict, list)):
        return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return str(value)


def prose(text: str) -> str:
    """Comment text for a Markdown table cell: `<`, `*` and `|` escaped outside code spans."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):
        parts[i] = (parts[i].replace("&", "&amp;").replace("<", "&lt;").replace("*", r"\*")
                    .replace("|", r"\|"))
    return "`".join(parts)


def code(value: Any) -> str:
    text = show(value).replace("|", r"\|")
    fence = "``" if "`" in text else "`"
    return f"{fence}{text}{fence}"


def key_table(option: Option, prefix: str, meanings: dict[str, str]) -> list[str]:
    """The option's keys: full name, value, meaning (its comment; else the comment the same key
    has in the file of the group that states it; else the argument of the built class)."""
    if not option.keys:
        return []
    rows = ["| key | value | meaning |", "|---|---|---|"]
    for key in option.keys:
        name = f"{prefix}.{key.path}" if prefix else key.path
        meaning = key.meaning or meanings.get(name) or (
            f"argument of `{key.target}`" if key.target else "") or inherited(name, meanings)
        value = "" if key.mapping else code(key.value)
        rows.append(f"| `{name}` | {value} | {prose(meaning) or '–'} |")
    return ["", *rows]


def inherited(name: str, meanings: dict[str, str]) -> str:
    """The meaning of the nearest enclosing key that has one (below a group: a comment on a
    whole group's block, e.g. an experiment's `model:`, is about that file), naming it."""
    parts = name.split(".")
    for n in range(len(parts) - 1, 1, -1):
        parent = ".".join(parts[:n])
        if parent in meanings:
            return f"in `{parent}`: {meanings[parent]}"
    return ""


def package(group: str, option: Option) -> str:
    """Where the option's keys go in the composed config."""
    if option.global_package:
        return ""
    return PACKAGES.get(f"{group}/{option.name}") or PACKAGES.get(group) or group.replace("/",
                                                                                          ".")


def option_section(option: Option, prefix: str, level: str, meanings: dict[str, str]
                   ) -> list[str]:
    lines = ["", f"{level} `{option.name}`", "", f"`{option.file.relative_to(ROOT)}`"]
    if option.header:
        lines += ["", prose(option.header)]
    based = [d for d in option.defaults if isinstance(d, str) and d != "_self_"]
    if based:
        lines += ["", "Builds on " + ", ".join(f"`{b}`" for b in based)
                  + "; the keys below are the ones this file sets."]
    overrides = [d for d in option.defaults if isinstance(d, dict)]
    if overrides:
        lines += ["", "Selects: " + ", ".join(
            f"`{next(iter(d)).removeprefix('override ').lstrip('/')}={next(iter(d.values()))}`"
            for d in overrides) + "."]
    if option.builds:
        lines += ["", f"Builds `{option.builds}`."]
    return lines + key_table(option, prefix, meanings)


def group_defaults(option: Option) -> list[str]:
    rows = ["| group | default option |", "|---|---|"]
    for entry in option.defaults:
        if isinstance(entry, dict):
            ((group, choice),) = entry.items()
            rows.append(f"| `{group}` | `{show(choice)}` |")
    return ["", *rows]


def groups() -> list[str]:
    """Config groups (folders holding YAML files), in the order train.yaml composes them."""
    train = yaml.safe_load((CONFIGS / "train.yaml").read_text())
    order = [next(iter(d)) for d in train["defaults"] if isinstance(d, dict)]
    found = sorted({str(f.parent.relative_to(CONFIGS)) for f in CONFIGS.rglob("*.yaml")
                    if f.parent != CONFIGS})
    return sorted(found, key=lambda g: (order.index(g.split("/")[0])
                                        if g.split("/")[0] in order else len(order), g))


def render() -> str:
    lines = ["# Configuration reference", "",
             "Every config group, option and key of `configs/`, with the value each file sets "
             "and what its comments say it means. Generated by "
             "`python scripts/config_reference.py` from the YAML files; edit those, then rerun "
             "the script (a test fails when this page and the files disagree).", "",
             "On the command line, `group=option` picks a file of a group (`model=f2llm_0_6b`), "
             "`key=value` sets a key (`data.batch_size=256`) and `++key=value` sets a key that "
             "no file holds; `--cfg job` prints the composed config instead of running it "
             "([Getting started](../getting-started.md#see-the-composed-config)). Values are "
             "shown as the files write them: `${...}` is an interpolation resolved when the run "
             "starts, `???` a value that must be given.", "",
             "## Entry points"]
    entry = {name: parse(CONFIGS / f"{name}.yaml") for name in ENTRY_POINTS}
    grouped = {group: [parse(f) for f in sorted((CONFIGS / group).glob("*.yaml"))]
               for group in groups()}
    # Each key's meaning where a file states it, for the files that set it again uncommented:
    # the comment of the file that defines the key, else the argument of the class it builds,
    # else what an experiment's comment says of it.
    meanings: dict[str, str] = {}
    placed = [("", option) for option in entry.values()] + [
        (package(group, option), option) for group, options in grouped.items()
        for option in options]
    defining = [(prefix, o) for prefix, o in placed if not o.global_package]
    for source in ("comment", "target", "experiment"):
        for prefix, option in placed if source == "experiment" else defining:
            for key in option.keys:
                name = f"{prefix}.{key.path}" if prefix else key.path
                meaning = (f"argument of `{key.target}`" if key.target else "") if (
                    source == "target") else key.meaning
                if meaning:
                    meanings.setdefault(name, meaning)
    for name, script in ENTRY_POINTS.items():
        option = entry[name]
        lines += ["", f"### `{script}`", "", f"`configs/{name}.yaml`"]
        if option.header:
            lines += ["", prose(option.header)]
        lines += group_defaults(option) + key_table(option, "", meanings)
    lines += ["", "## Config groups"]
    for group, options in grouped.items():
        lines += ["", f"### `{group}`", "", f"`configs/{group}/`: "
                  + ", ".join(f"`{o.name}`" for o in options)
                  + f". Pick one with `{group}=<option>`."]
        for option in options:
            lines += option_section(option, package(group, option), "####", meanings)
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the page differs from what the configs give")
    args = parser.parse_args(argv)
    page = render()
    if args.check:
        if not PAGE.exists() or PAGE.read_text() != page:
            print(f"{PAGE.relative_to(ROOT)} is out of date: run python "
                  "scripts/config_reference.py", file=sys.stderr)
            return 1
        return 0
    PAGE.parent.mkdir(parents=True, exist_ok=True)
    PAGE.write_text(page)
    print(f"wrote {PAGE.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
