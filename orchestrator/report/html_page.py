"""One self-contained HTML page: our CSS and JavaScript (orchestrator/report/viewer/, package
data) inlined, the data as JSON in a <script type="application/json"> block, and a
Content-Security-Policy that allows only these two inline blocks (by their SHA-256), so the
page can fetch nothing and no script that data might smuggle in can run."""

from __future__ import annotations

import base64
import hashlib
import html
import json
from collections.abc import Sequence
from functools import cache
from importlib import resources
from typing import Any

ASSETS = "orchestrator.report.viewer"
COMMON_JS = ("common.js",)


@cache
def asset(name: str) -> str:
    return resources.files(ASSETS).joinpath(name).read_text(encoding="utf-8")


def embed_json(payload: Any) -> str:
    """JSON safe inside <script>: every '<' escaped as \\u003c, so no '</script' or '<!--' in
    any string can end the block; U+2028/9 escaped for older parsers."""
    text = json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def render_page(title: str, payload: Any, scripts: Sequence[str]) -> str:
    """scripts: asset names run after common.js, in order, as one inline script."""
    style = asset("viewer.css")
    script = "\n".join(asset(name) for name in (*COMMON_JS, *scripts))
    policy = (f"default-src 'none'; script-src {csp_hash(script)}; style-src {csp_hash(style)}; "
              "img-src data:; base-uri 'none'; form-action 'none'")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
        f"<meta http-equiv=\"Content-Security-Policy\" content=\"{policy}\">\n"
        "<meta name=\"referrer\" content=\"no-referrer\">\n"
        "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
        f"<title>{html.escape(title)}</title>\n<style>{style}</style>\n</head>\n<body>\n"
        "<div id=\"app\"><p class=\"loading\">Loading...</p></div>\n"
        f"<script type=\"application/json\" id=\"data\">{embed_json(payload)}</script>\n"
        f"<script>{script}</script>\n</body>\n</html>\n"
    )
