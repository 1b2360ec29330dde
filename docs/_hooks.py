"""MkDocs hook: docstrings' Sphinx roles shown as plain code."""

import re


# Docstrings use Sphinx roles (:class:`Limit`, :func:`~lightning_nas.io.read_json`), which Markdown
# renders as ":class:" before the code. Show the code alone, as Sphinx would (``~``: the last name).
_ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|ref):<code>(~?)([^<]*)</code>")


def _role(match: re.Match) -> str:
    name = match.group(2).rsplit(".", 1)[-1] if match.group(1) else match.group(2)
    return f"<code>{name}</code>"


def on_page_content(html, page, config, files):
    return _ROLE.sub(_role, html)
