"""The documentation: generated tables equal their sources, the site builds strictly, user docs hold no history."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest

from .conftest import REPO

DOCS = REPO / "docs"


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", REPO / "tools" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_docs = _gen_docs()


@pytest.mark.parametrize("name", list(gen_docs.TABLES))
def test_generated_table_equals_its_source(name):
    make, page = gen_docs.TABLES[name]
    found = gen_docs._marker_re(name).search((DOCS / page).read_text())
    assert found, f"docs/{page} lost its <!-- gen:{name} --> markers"
    assert found.group(2) == make().rstrip() + "\n", (
        f"table {name!r} in docs/{page} differs from its source; run `{gen_docs.FIX_COMMAND}` and commit the result")


@pytest.mark.parametrize("page", list(gen_docs.PAGES))
def test_generated_page_equals_its_source(page):
    assert (DOCS / page).read_text() == gen_docs.PAGES[page](), (
        f"docs/{page} differs from the parsers it is generated from; run `{gen_docs.FIX_COMMAND}` and commit it")


def test_cli_reference_has_every_command_and_flag():
    from clipscan.cli import COMMANDS

    text = (DOCS / "reference" / "cli.md").read_text()
    for command in COMMANDS:
        assert f"\n## clipscan {command}\n" in text
    assert "`--decode`" in text and "`--recipe`" in text and "`--max-batch`" in text


def test_the_check_finds_a_stale_table_and_names_it(tmp_path):
    docs = tmp_path / "docs"
    shutil.copytree(DOCS, docs)
    page = docs / gen_docs.TABLES["backends"][1]
    page.write_text(page.read_text().replace("| `cpu` |", "| `cpu-typed-by-hand` |"))
    (docs / "reference" / "cli.md").write_text("# CLI reference\n")
    assert gen_docs.stale(docs) == ["table backends in docs/guides/backends.md", "page docs/reference/cli.md"]
    rewritten = gen_docs.render(docs)
    for path, text in rewritten.items():
        path.write_text(text)
    assert gen_docs.stale(docs) == []


def test_mkdocs_builds_the_site_strictly(tmp_path):
    """`mkdocs build --strict`: a broken link, a missing page in the nav or an API name mkdocstrings cannot
    find fails the build."""
    site = tmp_path / "site"
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-q", "-d", str(site)],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stdout + done.stderr
    for page in ("index.html", "reference/cli/index.html", "reference/python-api/index.html",
                 "guides/serve/index.html", "benchmarks/index.html"):
        assert (site / page).is_file(), page
    api = (site / "reference" / "python-api" / "index.html").read_text()
    assert "scan_bytes" in api and "ClipscanError" in api



def _user_docs():
    return [REPO / "README.md", *sorted(DOCS.rglob("*.md"))]


def test_user_docs_carry_no_issue_numbers_or_status_log():
    pattern = re.compile(r"#1[0-9]\b|Status")
    for path in _user_docs():
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not pattern.search(line), f"{path.relative_to(REPO)}:{number}: {line}"


def test_readme_is_short():
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) < 250, f"README.md has {len(lines)} lines; the details belong in docs/"
