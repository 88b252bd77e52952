"""MkDocs hooks (mkdocs.yml `hooks:`): the repository's top-level README.md, CHANGELOG.md and
CONTRIBUTING.md become pages of the site (index, changelog, contributing), so each text has one
home, and relative links are rewritten from repository paths to site paths (`docs/<page>.md`
read from README.md is `<page>.md` on the site; `../CHANGELOG.md` read from docs/ is
`changelog.md`).
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path
from typing import Any

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[1]
DOCS = "docs"
# Top-level files published as pages: repository path -> site path.
PUBLISHED = {"README.md": "index.md", "CHANGELOG.md": "changelog.md",
             "CONTRIBUTING.md": "contributing.md"}
_LINK = re.compile(r"(\]\()([^)\s]+)(\))")


def repository_path(site_path: str) -> str:
    """Where a page's source lives in the repository."""
    for repo, site in PUBLISHED.items():
        if site == site_path:
            return repo
    return posixpath.join(DOCS, site_path)


def site_path(repo_path: str) -> str | None:
    """Where a repository file is on the site (None: not published)."""
    if repo_path in PUBLISHED:
        return PUBLISHED[repo_path]
    if repo_path.startswith(DOCS + "/"):
        return repo_path[len(DOCS) + 1:]
    return None


def rewrite_links(markdown: str, page: str) -> str:
    """Relative links of the page at site path `page`, written for its place in the
    repository, pointed at the same files' places on the site."""
    source_dir = posixpath.dirname(repository_path(page))
    page_dir = posixpath.dirname(page)

    def fix(match: re.Match[str]) -> str:
        target = match[2]
        if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
            return match[0]
        path, hash_, anchor = target.partition("#")
        resolved = posixpath.normpath(posixpath.join(source_dir, path))
        on_site = site_path(resolved)
        if on_site is None:
            return match[0]  # left as is: mkdocs --strict reports it
        new = posixpath.relpath(on_site, page_dir or ".")
        return f"{match[1]}{new}{hash_}{anchor}{match[3]}"

    return _LINK.sub(fix, markdown)


def on_files(files: Files, config: Any) -> Files:
    for repo, site in PUBLISHED.items():
        files.append(File.generated(config, site, content=(ROOT / repo).read_text()))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Files) -> str:
    return rewrite_links(markdown, page.file.src_uri)
