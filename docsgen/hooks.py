"""MkDocs hooks (mkdocs.yml ``hooks:``): add the generated pages, the command-line reference
and one performance page per committed benchmark run, to the site and its navigation."""
import os
import sys

from mkdocs.structure.files import File

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import docsgen  # noqa: E402  (the repository's, also when MkDocs runs from elsewhere)

CLI_PAGE = "reference/cli.md"
PERFORMANCE_SECTION = "Performance"


def on_config(config):
    """Lists the performance pages under the Performance section of the navigation."""
    for entry in config["nav"]:
        if isinstance(entry, dict) and PERFORMANCE_SECTION in entry:
            overview = entry[PERFORMANCE_SECTION]
            overview = overview if isinstance(overview, list) else [{"Overview": overview}]
            entry[PERFORMANCE_SECTION] = overview + [
                {page.title: page.path} for page in docsgen.performance_pages()]
    return config


def on_files(files, config):
    files.append(File.generated(config, CLI_PAGE, content=docsgen.cli_page()))
    for page in docsgen.performance_pages():
        files.append(File.generated(config, page.path, content=page.markdown))
    return files
