"""Every text colour in the admin panel's stylesheet and the portal's pages reaches WCAG AA
contrast (4.5:1) against its own background, or, without one, against the page and card
backgrounds it can sit on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).parent.parent / "src" / "zerogate"
PANEL_CSS = SRC / "admin" / "static" / "panel.css"
PORTAL = SRC / "portal" / "templates"
#: the backgrounds text without its own sits on: white cards, the grey page
DEFAULT_BACKGROUNDS = ("#ffffff", "#f4f5f7")
AA = 4.5


def _hex(value: str) -> tuple[float, float, float] | None:
    value = value.strip().lower()
    if value in ("white",):
        value = "#ffffff"
    match = re.fullmatch(r"#([0-9a-f]{3}|[0-9a-f]{6})", value)
    if match is None:
        return None
    digits = match.group(1)
    if len(digits) == 3:
        digits = "".join(c * 2 for c in digits)
    return tuple(int(digits[i : i + 2], 16) / 255 for i in (0, 2, 4))  # type: ignore[return-value]


def _luminance(rgb: tuple[float, float, float]) -> float:
    def channel(c: float) -> float:
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgb)
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def contrast(a: str, b: str) -> float:
    ca, cb = _hex(a), _hex(b)
    assert ca is not None and cb is not None, (a, b)
    la, lb = sorted((_luminance(ca), _luminance(cb)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def rules(css: str) -> list[tuple[str, dict[str, str]]]:
    css = re.sub(r"/\*.*?\*/", "", css, flags=re.S)
    css = re.sub(r"@media[^{]*\{((?:[^{}]*\{[^{}]*\})*)\s*\}", r"\1", css)
    found = []
    for selector, body in re.findall(r"([^{}]+)\{([^{}]*)\}", css):
        decls = {}
        for decl in body.split(";"):
            name, sep, value = decl.partition(":")
            if sep:
                decls[name.strip()] = value.strip()
        found.append((selector.strip(), decls))
    return found


def pairs(css: str) -> list[tuple[str, str, str]]:
    """(selector, text colour, background) for every rule that sets a text colour."""
    found = rules(css)
    variables = {k: v for sel, d in found if sel == ":root" for k, v in d.items()}

    def resolve(value: str) -> str:
        value = value.replace("!important", "").strip()
        var = re.fullmatch(r"var\((--[\w-]+)\)", value)
        return variables.get(var.group(1), value) if var else value

    def own_background(decls: dict[str, str]) -> str:
        return resolve(decls.get("background", decls.get("background-color", "")))

    # a rule's background also lies under its descendants ("header.top" under "header.top a")
    under = {
        sel.strip(): own_background(d)
        for selectors, d in found
        for sel in selectors.split(",")
        if _hex(own_background(d)) is not None
    }
    result = []
    for selectors, decls in found:
        if "color" not in decls:
            continue
        color = resolve(decls["color"])
        if _hex(color) is None:
            continue  # inherit, currentColor: checked where it is set
        background = own_background(decls)
        for selector in selectors.split(","):
            parts = selector.split()
            ancestors = [" ".join(parts[:k]) for k in range(len(parts) - 1, 0, -1)]
            inherited = next((under[a] for a in ancestors if a in under), None)
            if _hex(background) is not None:
                backgrounds: tuple[str, ...] = (background,)
            elif inherited is not None:
                backgrounds = (inherited,)
            else:
                backgrounds = DEFAULT_BACKGROUNDS
            result += [(selector.strip(), color, b) for b in backgrounds]
    return result


def portal_css() -> str:
    return "\n".join(
        block
        for page in sorted(PORTAL.glob("*.html"))
        for block in re.findall(r"<style>(.*?)</style>", page.read_text(), re.S)
    )


@pytest.mark.parametrize("where", ["panel", "portal"])
def test_text_contrast_is_at_least_4_5(where: str) -> None:
    css = PANEL_CSS.read_text() if where == "panel" else portal_css()
    checked = pairs(css)
    assert len(checked) > 10, "the stylesheet was read"
    low = [
        f"{selector}: {color} on {background} = {contrast(color, background):.2f}"
        for selector, color, background in checked
        if contrast(color, background) < AA
    ]
    assert not low, "\n".join(low)


def test_the_checker_itself() -> None:
    assert round(contrast("#000", "#fff"), 1) == 21.0
    assert contrast("#8a90a0", "#f4f5f7") < AA  # the old footer grey
    assert contrast("#5a6275", "#f4f5f7") >= AA
