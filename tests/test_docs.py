"""The documentation: the site builds with warnings as errors and no network, every user-guide
page is in the navigation and linked from the index, the README's commands are the ones CI
and the tests run, its links resolve, and the cheap docstring examples run as doctests."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CONFIG = DOCS / "mkdocs.yml"
PAGES = DOCS / "pages"
README = ROOT / "README.md"

needs_mkdocs = pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed; the test extra brings it (pip install -e '.[test]')")

# a markdown link's target: [text](target) or ![alt](target)
LINK = re.compile(r"\]\(([^)\s]+)\)")


def config() -> dict:
    return yaml.safe_load(CONFIG.read_text(encoding="utf-8"))


def nav_pages(nav: list, section: str | None = None) -> list[str]:
    """The pages of the navigation (of one top-level section when ``section`` is given)."""
    found: list[str] = []

    def walk(items: list | str, inside: bool) -> None:
        if isinstance(items, str):
            if inside:
                found.append(items)
            return
        for item in items:
            if isinstance(item, str):
                walk(item, inside)
            else:
                for title, value in item.items():
                    walk(value, inside or title == section)

    walk(nav, section is None)
    return found


def built_path(page: str) -> str:
    """Where mkdocs writes ``page`` with directory URLs (its default)."""
    stem = page.removesuffix(".md")
    if stem == "index" or stem.endswith("/index"):
        return stem + ".html"
    return stem + "/index.html"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    # no network: any HTTP(S) request of the build goes to a closed local port and fails
    env = dict(os.environ, HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9",
               http_proxy="http://127.0.0.1:9", https_proxy="http://127.0.0.1:9", NO_PROXY="",
               no_proxy="")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(CONFIG), "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stderr[-4000:]}"
    assert "WARNING" not in proc.stderr, proc.stderr[-4000:]
    return out


@needs_mkdocs
def test_every_nav_page_is_built(site: Path) -> None:
    pages = nav_pages(config()["nav"])
    assert len(pages) >= 15
    for page in pages:
        html = site / built_path(page)
        assert html.is_file(), f"{page} was not built ({html})"
        assert len(html.read_text(encoding="utf-8")) > 2000, f"{page} built empty"


@needs_mkdocs
def test_references_are_generated(site: Path) -> None:
    api = (site / "reference/api/index.html").read_text(encoding="utf-8")
    for name in ("factorize", "select_rank", "open_matrix", "unmix", "partial_fit",
                 "MatrixLike", "n_components", "storage_options"):
        assert name in api, f"the API reference lacks {name}"
    cli = (site / "reference/cli/index.html").read_text(encoding="utf-8")
    for name in ("--checkpoint-every", "--resume", "--bad-bands", "reconstruct", "endmembers",
                 "--storage-options"):
        assert name in cli, f"the CLI reference lacks {name}"
    # the pages included from elsewhere in the repository, and the demo's picture
    assert "dask-jobqueue" in (site / "guide/deploy-recipes/index.html").read_text("utf-8")
    assert (site / "assets/report.png").stat().st_size == (ROOT / "examples/report.png").stat().st_size


def test_the_build_fetches_nothing() -> None:
    """No inventories or remote imports in the configuration: the build needs no network."""
    text = CONFIG.read_text(encoding="utf-8")
    assert "inventories" not in text and "import:" not in text
    assert not re.search(r"https?://", text)


def test_the_index_links_every_user_guide_page() -> None:
    guide = nav_pages(config()["nav"], "User guide")
    assert len(guide) >= 10
    links = {target.split("#")[0] for target in LINK.findall((PAGES / "index.md").read_text("utf-8"))}
    missing = sorted(set(guide) - links)
    assert not missing, f"docs/pages/index.md does not link {missing}"


def readme_commands() -> list[str]:
    """The commands of the README's Quickstart block, comments dropped."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"## Quickstart.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md has no Quickstart bash block"
    return [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]


def test_readme_commands_are_what_ci_and_the_tests_run() -> None:
    demo, tests = readme_commands()
    ci = [line.strip() for line in (ROOT / ".ci/run").read_text("utf-8").splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    # CI installs and tests exactly as README.md says
    assert ci[-1] == tests == 'pip install -e ".[test]" && pytest'
    assert shlex.split(demo) == ["pip", "install", "-e", ".", "&&", "dnmf", "demo"]
    # `dnmf demo` as the README runs it (no options) is a test of the suite
    assert 'run_cli("demo", timeout' in (ROOT / "tests/hyperspectral/test_cli.py").read_text("utf-8")


def test_readme_is_short_and_its_links_resolve() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 120
    targets = [t.split("#")[0] for t in LINK.findall(text) if not t.startswith(("http", "#"))]
    assert "examples/report.png" in targets
    for target in targets:
        assert (ROOT / target).exists(), f"README.md links {target}, which does not exist"


# docstring examples that take well under a second each (in-memory, in-process threads)
DOCTEST_MODULES = ["dnmf.api", "dnmf.estimator", "dnmf.io.open", "dnmf.io.sparse",
                   "dnmf.io.validate", "dnmf.hyperspectral.metrics"]


@pytest.mark.parametrize("name", DOCTEST_MODULES)
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    tests = [t for t in doctest.DocTestFinder().find(module) if t.examples]
    assert tests, f"{name} has no docstring examples"
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
