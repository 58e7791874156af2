"""The documentation's generated pages: the command-line reference (from the argument parser)
and the performance pages (from the committed ``benchmarks/results``), plus the reader of the
pages' Python examples that ``tests/test_docs.py`` runs. Used by ``docsgen/hooks.py`` (MkDocs).
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import json
import os
import re
from typing import NamedTuple

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(REPO, "benchmarks", "results")
NO_TEST = "<!-- no-test -->"


# --- the command-line reference -------------------------------------------------------------

def _subcommands(parser: argparse.ArgumentParser):
    """(name, parser, help) of each subcommand, in the order they were added."""
    for action in parser._actions:  # argparse has no public accessor for subparsers
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            return [(name, sub, helps.get(name, "")) for name, sub in action.choices.items()]
    return []


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=100)
    formatter.add_usage(parser.usage, parser._actions, parser._mutually_exclusive_groups,
                        prefix="")
    return formatter.format_help().strip()


def _cell(text) -> str:
    """Text in a Markdown table cell: no column break, no HTML (``runs/<recipe>``)."""
    return (str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
            .replace("|", "\\|").replace("\n", " "))


def _argument_rows(parser: argparse.ArgumentParser):
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            continue
        names = (", ".join(f"`{n}`" for n in action.option_strings)
                 or f"`{action.metavar or action.dest}`")
        if action.choices and not isinstance(action.choices, dict):
            value = " \\| ".join(f"`{c}`" for c in action.choices)
        elif action.nargs == 0:
            value = "flag"
        else:
            value = f"`{action.metavar or action.dest.upper()}`" + (
                " ..." if action.nargs in ("+", "*") else "")
        default = ("" if action.default is None or action.default is False  # 0 is shown
                   or action.default == argparse.SUPPRESS or action.nargs == 0
                   else f"`{action.default}`")
        yield f"| {names} | {value} | {default} | {_cell(action.help or '')} |"


def cli_reference(parser: argparse.ArgumentParser) -> str:
    """Markdown for one command and every subcommand of ``parser``: usage and a table of the
    arguments (name, value, default, help), all read from the parser."""
    out = [f"## `{parser.prog}`", "", parser.description or "", "",
           "```text", _usage(parser), "```", ""]
    for name, sub, help_text in _subcommands(parser):
        out += _subcommand_section(f"{parser.prog} {name}", sub, help_text)
    return "\n".join(out)


def _subcommand_section(title: str, sub: argparse.ArgumentParser, help_text: str) -> list:
    """One subcommand's usage and arguments, then its own subcommands' (``keras-vit
    data-service dispatcher``), each a section."""
    out = [f"### `{title}`", "", _cell(help_text), "", "```text", _usage(sub), "```", "",
           "| argument | value | default | description |", "|---|---|---|---|",
           *_argument_rows(sub), ""]
    for name, nested, nested_help in _subcommands(sub):
        out += _subcommand_section(f"{title} {name}", nested, nested_help)
    return out


def cli_parsers():
    """The parsers of the two console entry points: ``keras-vit`` and ``python -m export``
    (the same command modules, :mod:`export.command_line`)."""
    from export.cli import build_parser as export_parser
    from training.cli import build_parser
    return [build_parser(), export_parser()]


def cli_page() -> str:
    parts = ["# Command line", "",
             "Generated from the argument parsers (`training.cli.build_parser` and "
             "`export.cli.build_parser`) when the documentation is built. "
             "`keras-vit SUBCOMMAND --help` prints the same.", ""]
    parts += [cli_reference(parser) for parser in cli_parsers()]
    return "\n".join(parts)


# --- the performance pages ------------------------------------------------------------------

def _compare_module():
    """benchmarks/compare.py (not a package), whose ``report`` prints a run's tables: the
    pages render a committed run with the very function that printed it."""
    spec = importlib.util.spec_from_file_location(
        "_keras_vit_compare", os.path.join(REPO, "benchmarks", "compare.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _int_keys(rows):
    return [dict(row, results={int(k): v for k, v in row["results"].items()}) for row in rows]


def _machine_title(data, stem) -> str:
    machine = data["machine"]
    day = stem[:10]
    return (f"{machine['cpu']}, {machine['cores']} cores ({', '.join(machine['isa'])}), "
            f"{day}")


def _run_notes(markdown_path) -> str:
    """The hand-written preamble of a run's .md (what the JSON does not hold: the exact
    command, the machine's memory and load), up to the generated tables."""
    if not os.path.exists(markdown_path):
        return ""
    text = open(markdown_path, encoding="utf-8").read()
    return text.split("## keras-vit benchmark", 1)[0].strip()


def performance_run_page(json_path) -> tuple[str, str]:
    """(title, markdown) of one committed ``compare.py`` run."""
    compare = _compare_module()
    data = json.load(open(json_path, encoding="utf-8"))
    stem = os.path.splitext(os.path.basename(json_path))[0]
    args = argparse.Namespace(**data["args"])
    title = _machine_title(data, stem)
    versions = ", ".join(f"{k} {v}" for k, v in sorted(data["versions"].items()))
    notes = _run_notes(os.path.splitext(json_path)[0] + ".md")
    body = compare.report(args, _int_keys(data.get("inference", [])),
                          _int_keys(data.get("training", [])), data.get("ceilings", []))
    page = [f"# {title}", "",
            f"Generated from `benchmarks/results/{stem}.json`, a run of "
            "`benchmarks/compare.py` (see [Performance](index.md)).", "",
            f"- CPU: **{data['machine']['cpu']}**, {data['machine']['cores']} cores, "
            f"ISA: {', '.join(data['machine']['isa'])}",
            f"- Python {data['machine'].get('python', '?')}; {versions}", ""]
    if notes:
        page += ["## Notes on the run", "", notes, ""]
    page += ["## Results", "", body]
    return title, "\n".join(page)


class Page(NamedTuple):
    path: str      # relative to docs/
    title: str
    markdown: str


def performance_pages(results_dir: str = RESULTS) -> list[Page]:
    """One page per committed ``compare.py`` run (``*.json``, newest first) and one per other
    results note (``*.md`` without a JSON beside it)."""
    pages = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json")), reverse=True):
        title, markdown = performance_run_page(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        pages.append(Page(f"performance/{stem}.md", title, markdown))
    for path in sorted(glob.glob(os.path.join(results_dir, "*.md")), reverse=True):
        if os.path.exists(os.path.splitext(path)[0] + ".json"):
            continue
        stem = os.path.splitext(os.path.basename(path))[0]
        text = open(path, encoding="utf-8").read()
        heading = re.match(r"#\s+(.+)", text)
        title = heading.group(1).strip() if heading else stem
        note = (f"\n\n*Copied from `benchmarks/results/{stem}.md` when the documentation "
                "is built.*\n")
        pages.append(Page(f"performance/{stem}.md", title, text + note))
    return pages


# --- the pages' Python examples --------------------------------------------------------------

class Example(NamedTuple):
    path: str      # relative to the repository
    line: int      # of the opening fence
    code: str
    tested: bool


_FENCE = re.compile(r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
                    re.S | re.M)


def python_examples(path: str) -> list[Example]:
    """The fenced ```` ```python ```` blocks of a Markdown file; a block right after a line
    ``<!-- no-test -->`` is marked untested."""
    text = open(path, encoding="utf-8").read()
    examples = []
    for match in _FENCE.finditer(text):
        before = text[:match.start()].rstrip().splitlines()
        tested = not (before and before[-1].strip() == NO_TEST)
        lines = match.group("code").splitlines()
        indent = len(match.group("indent"))
        code = "\n".join(line[indent:] for line in lines)
        examples.append(Example(os.path.relpath(path, REPO), text.count("\n", 0, match.start()) + 1,
                                code, tested))
    return examples


def documentation_files() -> list[str]:
    return [os.path.join(REPO, "README.md")] + sorted(
        glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True))
