"""MkDocs hook: links from a page to repository files outside docs/ resolve to pages of the site.

The pages link to the code they describe (``[install-pi.sh](../deploy/install-pi.sh)``,
``[schemas](../edge/protocol/schemas)``), which is right on GitHub and in an editor but outside ``docs_dir``, where
MkDocs cannot follow it (strict mode: "not found"). This hook finds every such link, adds a page for each target at
build time (a file: its text in a code block; a folder: the list of its files, each with its own page) under
``source/``, and points the link there. A link to a repository path that does not exist is left alone, so strict
mode still fails on it.
"""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

from mkdocs.structure.files import File, Files

SOURCE = "source"
"""Where the generated pages of repository files live in the site."""
MAX_BYTES = 256 * 1024
LANGUAGES = {".py": "python", ".sh": "bash", ".json": "json", ".yaml": "yaml", ".yml": "yaml", ".toml": "toml",
             ".service": "ini", ".conf": "text", ".txt": "text", ".md": "markdown", ".csv": "text", ".log": "text",
             ".pub": "text", ".html": "html", ".sql": "sql"}
# [text](target "title") outside code; the target is group 2
LINK = re.compile(r"(\]\()([^)\s]+)((?:\s+\"[^\"]*\")?\))")
FENCE = re.compile(r"^(```|~~~)")

_targets: dict[str, str] = {}
"""Repository path of a link target (relative to the repository, posix) -> its generated page (docs-relative)."""


def _outside_text(markdown: str):
    """(is_code, chunk) pieces of a page: fenced blocks and inline code are never rewritten."""
    in_fence = False
    for line in markdown.splitlines(keepends=True):
        if FENCE.match(line.lstrip()):
            in_fence = not in_fence
            yield True, line
        elif in_fence:
            yield True, line
        else:
            for i, part in enumerate(re.split(r"(`[^`]*`)", line)):
                yield i % 2 == 1, part


def _repo_target(page_src: str, target: str, docs_dir: Path, root: Path) -> str | None:
    """The repository path a relative link of ``page_src`` points to, where that is outside docs/ and exists."""
    if re.match(r"^[a-z][a-z0-9+.-]*:", target) or target.startswith(("#", "/")):
        return None
    path = target.split("#", 1)[0].split("?", 1)[0]
    if not path:
        return None
    joined = posixpath.normpath(posixpath.join(posixpath.dirname(page_src), path))
    if not joined.startswith("../"):
        return None  # inside docs/: MkDocs validates it
    absolute = (docs_dir / joined).resolve()
    try:
        relative = absolute.relative_to(root).as_posix()
    except ValueError:
        return None
    return relative if absolute.exists() and not relative.startswith(".git") else None


def _page_for(relative: str, root: Path) -> str:
    path = root / relative
    return f"{SOURCE}/{relative}/index.md" if path.is_dir() else f"{SOURCE}/{relative}.md"


def _text(path: Path) -> str | None:
    if path.stat().st_size > MAX_BYTES:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def _file_page(relative: str, root: Path) -> str:
    path = root / relative
    text = _text(path)
    head = f"# `{relative}`\n\nThe repository's file as of this build of the site.\n\n"
    if text is None:
        return head + f"A binary or large file ({path.stat().st_size} bytes): see it in the repository.\n"
    fence = "````" if "```" in text else "```"
    language = LANGUAGES.get(path.suffix, "text")
    return f"{head}{fence}{language}\n{text.rstrip()}\n{fence}\n"


def _folder_page(relative: str, root: Path, add) -> str:
    path = root / relative
    lines = [f"# `{relative}/`\n", "The repository's folder as of this build of the site.\n"]
    for child in sorted(path.iterdir()):
        if child.name.startswith((".", "__pycache__")):
            continue
        if child.is_dir():
            lines.append(f"- `{child.name}/`")
        else:
            child_relative = f"{relative}/{child.name}"
            add(child_relative)
            lines.append(f"- [`{child.name}`]({child.name}.md)")
    return "\n".join(lines) + "\n"


def on_files(files: Files, config) -> Files:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    _targets.clear()
    pages: dict[str, str] = {}

    def add(relative: str) -> None:
        if relative in _targets:
            return
        page = _page_for(relative, root)
        _targets[relative] = page
        pages[page] = "" if (root / relative).is_dir() else _file_page(relative, root)
        if (root / relative).is_dir():
            pages[page] = _folder_page(relative, root, add)

    for file in list(files.documentation_pages()):
        markdown = file.content_string
        for is_code, chunk in _outside_text(markdown):
            if is_code:
                continue
            for match in LINK.finditer(chunk):
                relative = _repo_target(file.src_uri, match.group(2), docs_dir, root)
                if relative is not None:
                    add(relative)
    for page, content in pages.items():
        files.append(File.generated(config, page, content=content))
    return files


def on_page_markdown(markdown: str, page, config, files) -> str:
    docs_dir = Path(config["docs_dir"]).resolve()
    root = Path(config["config_file_path"]).resolve().parent
    src = page.file.src_uri
    out = []
    for is_code, chunk in _outside_text(markdown):
        if is_code:
            out.append(chunk)
            continue

        def rewrite(match: re.Match) -> str:
            relative = _repo_target(src, match.group(2), docs_dir, root)
            if relative is None or relative not in _targets:
                return match.group(0)
            target = posixpath.relpath(_targets[relative], posixpath.dirname(src) or ".")
            return f"{match.group(1)}{target}{match.group(3)}"

        out.append(LINK.sub(rewrite, chunk))
    return "".join(out)
