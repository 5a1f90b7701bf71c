"""The README is a front door and the docs hold together: size, links, citations, no outside paths.

- README.md stays a front door (<= 250 lines); method, protocols, results and the log live in docs/.
- Every relative link (file and ``#anchor``, GitHub's heading slugs) in README.md, the Task READMEs and
  docs/*.md resolves.
- Nothing shipped names ``../shared`` (a folder only the project's own machines have): only tests/ and the
  test configuration may default to it.
- A ``docs/...`` or ``*.md`` file the package cites exists in the repository.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO_ROOT

MARKDOWN = [REPO_ROOT / "README.md", REPO_ROOT / "Task_A" / "README.md", REPO_ROOT / "Task_B" / "README.md",
            *sorted((REPO_ROOT / "docs").glob("*.md"))]


def _without_code_blocks(text: str) -> str:
    return re.sub(r"```.*?```", "", text, flags=re.S)


def heading_slugs(text: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings (lower case, punctuation dropped, spaces to '-',
    repeats numbered)."""
    out: set[str] = set()
    seen: dict[str, int] = {}
    for line in _without_code_blocks(text).splitlines():
        m = re.match(r"^(#{1,6})\s+(.*)", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", re.sub(r"[`*_]", "", m.group(2).strip().lower())).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    bad = []
    for m in re.finditer(r"\]\(([^)\s]+)\)", _without_code_blocks(path.read_text())):
        link = m.group(1)
        if re.match(r"^[a-z]+://|^mailto:", link):
            continue
        target_part, _, anchor = link.partition("#")
        target = (path.parent / target_part).resolve() if target_part else path
        if not target.exists():
            bad.append(f"{link} (no such file)")
        elif anchor and target.suffix == ".md" and anchor not in heading_slugs(target.read_text()):
            bad.append(f"{link} (no heading #{anchor} in {target.name})")
    return bad


def test_readme_is_a_front_door() -> None:
    lines = (REPO_ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 250, f"README.md has {len(lines)} lines; move detail into docs/"
    text = "\n".join(lines)
    for needed in ("make reports", "make test", "docs/architecture.md", "docs/results.md"):
        assert needed in text, f"README.md should mention {needed!r}"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    assert path.is_file(), f"{path} is missing"
    assert broken_links(path) == []


def test_the_link_check_catches_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Title here\n\n[ok](#title-here) [bad](b.md) [bad anchor](#nope)\n")
    assert broken_links(tmp_path / "a.md") == ["b.md (no such file)", "#nope (no heading #nope in a.md)"]


def _tracked_files() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, check=True, capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [f for f in out.splitlines() if f]


def test_nothing_shipped_names_the_developers_shared_folder() -> None:
    allowed = ("tests/", "pyproject.toml")  # the test configuration may default to it
    offenders = []
    for rel in _tracked_files():
        if rel.startswith(allowed) or not (REPO_ROOT / rel).is_file():
            continue
        try:
            text = (REPO_ROOT / rel).read_text()
        except UnicodeDecodeError:
            continue
        offenders += [f"{rel}:{i}" for i, line in enumerate(text.splitlines(), 1) if "../shared" in line
                      or "shared/facecom" in line]
    assert offenders == [], "only tests/ and the test configuration may name ../shared"


def test_documents_the_package_cites_exist() -> None:
    missing = []
    for path in sorted((REPO_ROOT / "facecom_utils").rglob("*.py")):
        for m in re.finditer(r"(?<![\w/.])((?:docs|Task_A|Task_B|experiments|tools)/[\w./-]+\.(?:md|py))", path.read_text()):
            if not (REPO_ROOT / m.group(1)).is_file():
                missing.append(f"{path.relative_to(REPO_ROOT)} cites {m.group(1)}")
    assert missing == []


def test_architecture_lists_every_module() -> None:
    """docs/architecture.md names every package module in its folder's rows (a new module gets its line)."""
    text = (REPO_ROOT / "docs" / "architecture.md").read_text()
    rows: dict[str, set[str]] = {}
    folder = None
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("|") else []
        if len(cells) < 3:
            continue
        if cells[0].startswith("`"):
            folder = cells[0].strip("`")
        if folder:
            rows.setdefault(folder, set()).update(re.findall(r"`(\w+)`", cells[1]))
    missing = [p.relative_to(REPO_ROOT / "facecom_utils").as_posix()
               for p in sorted((REPO_ROOT / "facecom_utils").glob("*/*.py"))
               if p.stem not in ("__init__", "__main__") and p.stem not in rows.get(p.parent.name, set())]
    assert missing == [], "add a line to docs/architecture.md's module table for each"


REFERENCE_RUN = REPO_ROOT / "docs" / "reference-run"


def test_the_published_reference_run_is_compact_complete_and_path_free() -> None:
    """docs/reference-run/ (make reference): every notebook finished without dataset images, a few MB, no folder of
    the machine it ran on, its commit in this history, and the README links it with that commit."""
    import json

    from facecom_utils.reporting.publish import MAX_PUBLISHED_BYTES

    summary = json.loads((REFERENCE_RUN / "summary.json").read_text())
    assert summary["ok"] and len(summary["notebooks"]) == 4
    for nb in summary["notebooks"]:
        assert nb["parameters"]["dataset_images"] is False, nb["name"]
        assert (REFERENCE_RUN / nb["nocode_html"]).is_file() and (REFERENCE_RUN / nb["name"] / "metrics.json").is_file()
    files = [p for p in REFERENCE_RUN.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_PUBLISHED_BYTES
    assert not [p for p in files if p.suffix not in (".html", ".json", ".css")]
    for p in files:
        text = p.read_text()
        for folder in ("/work/", "/home/", "/tmp/", "/root/", "shared/facecom", "/Users/"):
            assert folder not in text, (p.name, folder)
    commit = summary["provenance"]["commit"]
    proc = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=REPO_ROOT, capture_output=True)
    if proc.returncode != 0 and not (REPO_ROOT / ".git" / "shallow").exists():
        pytest.fail(f"the reference run's commit {commit} is not in this repository's history")
    readme = (REPO_ROOT / "README.md").read_text()
    assert "docs/reference-run/index.html" in readme and commit[:7] in readme
