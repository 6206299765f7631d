"""Sphinx extension: write each inline script of a page once.

Sphinx 7.4 adds an inline script (``app.add_js_file(None, body=...)``) that an extension registers
after the builder has started twice: once as it is registered, once more when the builder collects
late assets (``filename`` ``None`` the first time, ``""`` the second, so they do not compare
equal). sphinx-thebe registers ``const THEBE_JS_URL = ...`` that way, and the second copy throws
"Identifier 'THEBE_JS_URL' has already been declared" on every page. Enabled from _config.yml
(``sphinx: local_extensions: {page_fixes: web}``).
"""

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


def setup(app: Sphinx) -> dict[str, Any]:
    # late priority: run after the extensions that add per-page scripts (myst-nb's widgets)
    app.connect("html-page-context", _drop_repeated_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
