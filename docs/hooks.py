"""MkDocs hooks: repository files that live outside ``docs/`` become pages of the site.

``deploy/README.md``, ``benchmarks/README.md``, ``ARCHITECTURE.md``, ``CHANGELOG.md`` and the
demo picture are read where they live (one home for each text, no copy to keep in step). A
relative link inside them points into the repository, not the site: it becomes the path in
code, so ``--strict`` checks the site's own links only.
"""

from __future__ import annotations

import posixpath
import re
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent

#: repository file -> page of the site
PAGES = {
    "deploy/README.md": "guide/deploy-recipes.md",
    "benchmarks/README.md": "guide/benchmarks.md",
    "ARCHITECTURE.md": "development/architecture.md",
    "CHANGELOG.md": "changelog.md",
}
#: repository file -> asset of the site
ASSETS = {"examples/report.png": "assets/report.png"}

# [text](target) but not ![image](…), absolute URLs or in-page anchors
_LINK = re.compile(r"(?<!!)\[([^\]\n]+)\]\((?!https?://|mailto:|#)([^)\s]+)\)")


def repository_links(text: str, source: str) -> str:
    """Relative links of ``source`` (a repository path) as repository paths in code."""

    def plain(match: re.Match[str]) -> str:
        label, target = match.group(1), match.group(2)
        path = posixpath.normpath(posixpath.join(posixpath.dirname(source), target))
        return label if label.strip("`") == path else f"{label} (`{path}`)"

    return _LINK.sub(plain, text)


# the docstrings' Sphinx roles, as Markdown renders them: :func:<code>dnmf.factorize</code>
_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|obj|exc|ref|const):<code>~?([^<]*)</code>")


def on_page_content(html: str, page, config, files) -> str:
    """Drop the Sphinx role of a name in a docstring, keeping the name in code."""
    return _ROLE.sub(r"<code>\1</code>", html)


def on_config(config):
    # mkdocs-click imports the ``dnmf`` command from docs/cli_command.py (mkdocs restores
    # sys.path after loading this module, so the folder is added here)
    if str(DOCS) not in sys.path:
        sys.path.insert(0, str(DOCS))
    return config


def on_files(files: Files, config) -> Files:
    for source, page in PAGES.items():
        text = (ROOT / source).read_text(encoding="utf-8")
        files.append(File.generated(config, page, content=repository_links(text, source)))
    for source, asset in ASSETS.items():
        files.append(File.generated(config, asset, abs_src_path=str(ROOT / source)))
    return files
