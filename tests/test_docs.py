"""The docs are plain Markdown (they render on GitHub without a build step); this keeps their
relative links and the README's commands honest."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]]*\]\(([^)#\s]+)(?:#[^)]*)?\)")


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_to_existing_files(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        if not (page.parent / target).exists():
            broken.append(target)
    assert not broken, f"{page.name} links to missing files: {broken}"


def test_readme_first_screen_has_the_two_commands():
    first_screen = "\n".join(ROOT.joinpath("README.md").read_text().splitlines()[:30])
    assert "pip install -e . && minicoat train" in first_screen
    assert ('pip install -e ".[test]" && pip install --no-deps timm==1.0.31 && pytest'
            in first_screen)


def test_ci_runs_the_readme_test_command():
    ci = ROOT.joinpath(".ci", "run").read_text()
    assert 'pip install --quiet -e ".[test]"' in ci and "\npytest\n" in ci
    assert "pip install --quiet --no-deps timm==1.0.31" in ci  # tests/test_timm.py needs it


def test_the_readme_test_command_reaches_the_site_test():
    """`pip install -e ".[test]"` brings the docs tooling, and CI brings Chromium, so the
    README's test command builds the course site and checks it in a browser (test_site.py)."""
    pyproject = ROOT.joinpath("pyproject.toml").read_text()
    test_extra = re.search(r"^test = \[(.*?)^\]", pyproject, re.M | re.S).group(1)
    assert '"minicoat[docs]"' in test_extra and '"selenium' in test_extra
    ci = ROOT.joinpath(".ci", "run").read_text()
    assert "apt-get install" in ci and "chromium chromium-driver" in ci
    assert ci.index("chromium-driver") < ci.index("\npytest\n")
