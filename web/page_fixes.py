"""Sphinx extension: two fixes to how Sphinx 7.4 writes the site.

1. Write each inline script of a page once.

Sphinx 7.4 adds an inline script (``app.add_js_file(None, body=...)``) that an extension registers
after the builder has started twice: once as it is registered, once more when the builder collects
late assets (``filename`` ``None`` the first time, ``""`` the second, so they do not compare
equal). sphinx-thebe registers ``const THEBE_JS_URL = ...`` that way, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" on every page. Enabled from _config.yml
(``sphinx: local_extensions: {page_fixes: web}``).

2. Copy a changed static file (``html_static_path``: web/static) even when no page changed.
Sphinx copies static files only after writing pages, and an incremental build in which no source
changed stops at "no targets are out of date", so an edited stylesheet or script never reached
_build/html. When a static file differs from its copy (size or modification time; Sphinx copies
the times along), the root document is marked outdated, which makes the build run to the end.
"""

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sphinx.application import Sphinx


def _drop_repeated_scripts(
    app: Sphinx, pagename: str, templatename: str, context: dict[str, Any], doctree: Any
) -> None:
    scripts = context.get("script_files")
    if not scripts:
        return
    seen: set[tuple[str, tuple[tuple[str, str], ...]]] = set()
    unique = []
    for script in scripts:
        key = (script.filename or "", tuple(sorted(script.attributes.items())))
        if key not in seen:
            seen.add(key)
            unique.append(script)
    context["script_files"] = unique  # a new list: the builder's own list stays as it was


def _static_files(app: Sphinx) -> Iterator[tuple[Path, Path]]:
    """(source, copy in _static) for every file of the book's own html_static_path folders
    (extensions add theirs as absolute paths, some with templates that are not copied as is)."""
    for folder in app.config.html_static_path:
        if Path(folder).is_absolute():
            continue
        source_root = Path(app.confdir, folder)
        for source in source_root.rglob("*"):
            if source.is_file():
                yield source, Path(app.outdir, "_static", source.relative_to(source_root))


def stale_static_files(app: Sphinx) -> list[str]:
    """Static files whose copy in the built site is missing or differs in size or time."""
    stale = []
    for source, copy in _static_files(app):
        try:
            built = copy.stat()
        except FileNotFoundError:
            stale.append(str(source))
            continue
        here = source.stat()
        if built.st_size != here.st_size or int(built.st_mtime) != int(here.st_mtime):
            stale.append(str(source))
    return stale


def _rebuild_for_static_files(app: Sphinx, env: Any, added: set[str], changed: set[str],
                              removed: set[str]) -> list[str]:
    if added or changed:
        return []  # pages will be written, and the static files copied after them
    return [app.config.root_doc] if stale_static_files(app) else []


def setup(app: Sphinx) -> dict[str, Any]:
    # late priority: run after the extensions that add per-page scripts (myst-nb's widgets)
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    app.connect("env-get-outdated", _rebuild_for_static_files)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
