"""The documentation cannot rot: every ```python block of README.md and docs/*.md runs (the
blocks of one page in order, in one namespace, in a temporary directory), the README's test
command is the one CI runs, the command-line reference covers every subcommand and flag, and
there is one performance page per committed benchmark run, naming its CPU."""
import glob
import json
import os
import re
import traceback

import pytest

import docsgen
from tests.conftest import REPO

PAGES = [path for path in docsgen.documentation_files()
         if any(example.tested for example in docsgen.python_examples(path))]


def run_examples(path):
    """Runs the tested examples of one page; an AssertionError names the page, the block's
    line and the error."""
    namespace = {"__name__": "__docs__"}
    for example in docsgen.python_examples(path):
        if not example.tested:
            continue
        try:
            exec(compile(example.code, f"{example.path}:{example.line}", "exec"), namespace)
        except Exception:  # noqa: BLE001  (any error of an example fails the page)
            raise AssertionError(f"the example at {example.path}:{example.line} fails:\n"
                                 f"{traceback.format_exc(limit=-3)}") from None


@pytest.mark.parametrize("path", PAGES, ids=[os.path.relpath(p, REPO) for p in PAGES])
def test_examples_run(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_examples(path)


def test_every_guide_has_examples_and_few_are_untested():
    names = {os.path.relpath(p, REPO) for p in PAGES}
    for page in ("README.md", "docs/getting-started.md", "docs/models.md", "docs/serving.md",
                 "docs/portable.md", "docs/inspection.md"):
        assert page in names, f"{page} has no tested example"
    examples = [e for p in docsgen.documentation_files() for e in docsgen.python_examples(p)]
    untested = [f"{e.path}:{e.line}" for e in examples if not e.tested]
    assert len(untested) <= 4, f"too many <!-- no-test --> examples: {untested}"


def test_a_broken_example_fails(tmp_path):
    page = tmp_path / "broken.md"
    page.write_text("# A page\n\n```python\nimport keras_vit\nx = 1\n```\n\ntext\n\n"
                    "```python\nkeras_vit.ViT(image_size=30, patch_size=8)\n```\n")
    with pytest.raises(AssertionError, match=r"broken.md:10 fails"):
        run_examples(str(page))
    page.write_text(f"{docsgen.NO_TEST}\n```python\nraise RuntimeError\n```\n")
    run_examples(str(page))  # marked: not run


def test_readme_test_command_is_the_one_ci_runs():
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    ci = open(os.path.join(REPO, ".ci", "run"), encoding="utf-8").read()
    command = "python -m pytest -q -n 2 --dist loadfile tests"
    assert f'pip install ".[test]" && {command}\n' in readme
    assert f"\n{command}\n" in ci
    assert "python -m mkdocs build --strict" in ci


def test_every_page_is_in_the_navigation():
    """(mkdocs.yml read as text: the suite runs without the docs extra and its YAML parser.)"""
    config = open(os.path.join(REPO, "mkdocs.yml"), encoding="utf-8").read()
    nav = config.split("\nnav:\n", 1)[1]
    pages = [os.path.relpath(p, os.path.join(REPO, "docs"))
             for p in glob.glob(os.path.join(REPO, "docs", "**", "*.md"), recursive=True)]
    missing = [page for page in pages if f": {page}\n" not in nav + "\n"]
    assert not missing, f"pages missing from mkdocs.yml's nav: {missing}"
    assert ": reference/cli.md" in nav and "Architecture: architecture.md" in nav


def test_cli_reference_covers_every_subcommand_and_flag():
    page = docsgen.cli_page()
    for parser in docsgen.cli_parsers():
        subcommands = [(f"{parser.prog} {name}", sub) for name, sub, _ in
                       docsgen._subcommands(parser)]
        assert subcommands, parser.prog
        for title, sub in subcommands:
            assert f"### `{title}`" in page, f"{title} missing"
            section = page.split(f"### `{title}`\n", 1)[1].split("\n### ", 1)[0]
            for action in sub._actions:
                for flag in action.option_strings:
                    if flag not in ("-h", "--help"):
                        assert f"`{flag}`" in section, f"{title} {flag} missing"
            # and their own subcommands (keras-vit data-service dispatcher)
            subcommands += [(f"{title} {name}", nested) for name, nested, _ in
                            docsgen._subcommands(sub)]


def test_one_performance_page_per_run_naming_its_cpu():
    pages = {page.path: page for page in docsgen.performance_pages()}
    runs = sorted(glob.glob(os.path.join(docsgen.RESULTS, "*.json")))
    assert runs
    for run in runs:
        data = json.load(open(run, encoding="utf-8"))
        stem = os.path.splitext(os.path.basename(run))[0]
        page = pages[f"performance/{stem}.md"]
        assert data["machine"]["cpu"] in page.title and data["machine"]["cpu"] in page.markdown
        row = data["inference"][0]
        batch, result = next(iter(row["results"].items()))
        figure = f"{result['images_per_s']:.2f}"
        line = next(line for line in page.markdown.splitlines()
                    if f"| {row['model']} | {row['dtype']} | {row['setting']} |" in line)
        assert figure in line, (line, figure, batch)


def _slug(heading):
    """The anchor MkDocs (toc) and GitHub give a heading."""
    text = re.sub(r"[^\w\s-]", "", heading.strip().lower())
    return re.sub(r"[\s]+", "-", text)


def test_readme_links_point_into_the_docs():
    """README.md is outside the strict MkDocs build: its relative links and their anchors are
    checked here."""
    readme = open(os.path.join(REPO, "README.md"), encoding="utf-8").read()
    readme = re.sub(r"^```.*?^```", "", readme, flags=re.S | re.M)  # no links in code
    links = re.findall(r"\]\(((?!https?:)[^)#\s]+)(#[^)\s]+)?\)", readme)
    assert len(links) > 10
    for path, anchor in links:
        target = os.path.join(REPO, path)
        assert os.path.exists(target), f"README links to missing {path}"
        if anchor:
            headings = re.findall(r"^#+\s+(.+)$", open(target, encoding="utf-8").read(), re.M)
            assert anchor[1:] in {_slug(h) for h in headings}, f"README: {path}{anchor}"


def test_cli_reference_shows_a_default_of_zero():
    """A default of 0 is a default (before: shown blank, like None)."""
    rows = [line for line in docsgen.cli_page().splitlines() if line.startswith("| `--port` |")
            and "default: any free one" in line]  # keras-vit data-service worker --port
    assert len(rows) == 1 and "| `0` |" in rows[0], rows
