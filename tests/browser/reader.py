"""What a reader sees on a page, collected in the browser, and the rules the page tests hold it to.

The JavaScript below gathers many facts in one ``page.evaluate`` (the layout at one window size,
every image with its resolution, the visible controls, the prose before each explorer); the
Python functions judge them, and test_checkers.py tests each judge on hand-written cases.
"""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

SIZES = {"laptop": {"width": 1366, "height": 900}, "phone": {"width": 390, "height": 844}}
# No text in a figure may be drawn smaller than this, in CSS px, where the page shows it. 9 px is
# what the book's figure style is sized for: quantbook.kit draws figures for the ~730 px column
# so that a figure's smallest font, in points, shows at about as many CSS px.
MIN_TEXT_PX = 9.0
# ipywidgets 8 controls a reader can move; a toggle button inside toggle buttons counts once
CONTROLS = (".widget-slider, .widget-dropdown, .widget-toggle-buttons, .widget-toggle-button, "
            ".widget-checkbox, .widget-button, .widget-text, .widget-textarea, .widget-radio, "
            ".widget-radio-box, .widget-select, .widget-select-multiple, .widget-play, "
            ".widget-colorpicker, .widget-datepicker, .widget-combobox, .widget-tagsinput, "
            ".widget-upload")


def figure_style(kit: Path | None = None) -> dict:
    """``quantbook.kit.FIGURE_STYLE``, the rcParams the chapters draw with, read from the
    module's source: importing quantbook.kit would import torch (seconds, and threads started
    before the test cuts the network off). The dict must stay a literal.

    Raises:
        ValueError: kit.py has no literal ``FIGURE_STYLE = {...}``.
    """
    if kit is None:
        spec = importlib.util.find_spec("quantbook.kit")
        if spec is None or spec.origin is None:
            raise ValueError("quantbook is not installed: run `make setup`")
        kit = Path(spec.origin)
    for node in ast.parse(kit.read_text()).body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if any(isinstance(t, ast.Name) and t.id == "FIGURE_STYLE" for t in targets):
            return ast.literal_eval(node.value)
    raise ValueError(f"{kit}: no literal FIGURE_STYLE = {{...}} to read the font sizes from")


def smallest_font_pt(style: dict) -> float:
    """The smallest font size of a matplotlib style, in points (keys ``*size`` but figsize).

    Example: ``{"font.size": 10, "xtick.labelsize": 9, "figure.figsize": (7, 4)}`` -> 9.
    """
    sizes = [value for key, value in style.items()
             if key.endswith("size") and key != "figure.figsize"
             and isinstance(value, int | float) and not isinstance(value, bool)]
    if not sizes:
        raise ValueError(f"no numeric font size in the style: {sorted(style)}")
    return float(min(sizes))


def text_px(font_pt: float, dpi: float, shown_width: float, natural_width: int) -> float:
    """How tall ``font_pt`` text of a PNG saved at ``dpi`` is, in CSS px, where the page shows
    the image ``shown_width`` CSS px wide; the PNG is ``natural_width`` pixels wide.

    Example: 9 pt at 200 dpi is 25 PNG pixels; a 1400-pixel PNG shown 700 px wide halves that:
    ``text_px(9, 200, 700, 1400)`` = 12.5.
    """
    return font_pt * dpi / 72 * shown_width / natural_width


_FILE_NAME = re.compile(r"(^|/)[^/\s]+\.(png|jpe?g|gif|svg|webp)$", re.I)
_HASH = re.compile(r"^[0-9a-f]{16,}$", re.I)
_REPR = re.compile(r"^<(Figure|matplotlib|IPython)[ .]")


def alt_problem(alt: str | None) -> str | None:
    """Why an image's alt text says nothing to a reader who cannot see it, or None if it does.

    Sphinx fills a missing alt with the image's URI, so a file name or a hash is no alt text.
    """
    if alt is None or not alt.strip():
        return "no alt text"
    text = alt.strip()
    if _FILE_NAME.search(text) or _HASH.match(text):
        return f"alt text is a file name: {text[:60]!r}"
    if _REPR.match(text):
        return f"alt text is a Python repr: {text[:60]!r}"
    return None


def normalize(text: str) -> str:
    """Text with every run of white space (no-break and thin spaces too) as one space."""
    return re.sub(r"\s+", " ", text.replace("\u00a0", " ").replace("\u202f", " ")).strip()


def prose_mentions(readout: str, prose: str) -> bool:
    """Whether the prose quotes the slider's starting value as its readout shows it (spaces
    normalized, case kept): an explorer starts at the value the text discusses."""
    value = normalize(readout)
    return bool(value) and value in normalize(prose)


# Layout at the current window size, and every image of the article with what it takes to judge
# its alt text and the size of its text. The resolution comes from the PNG's pHYs chunk, which
# matplotlib writes from the savefig dpi (cached per URL: the second size reuses it).
FACTS_JS = """async () => {
  const root = document.documentElement, vw = root.clientWidth;
  const clipped = el => {
    for (let a = el.parentElement; a && a !== document.body; a = a.parentElement) {
      if (getComputedStyle(a).overflowX !== 'visible') return true;
    }
    return false;
  };
  const wide = [];
  if (root.scrollWidth > vw) {  // name the outermost elements that stick out
    for (const el of document.body.querySelectorAll('*')) {
      const r = el.getBoundingClientRect();
      if (r.width === 0 || r.right <= vw + 0.5 || clipped(el)) continue;
      if (wide.some(w => w.el.contains(el))) continue;
      const classes = el.className ? ` class="${el.className}"` : '';
      wide.push({el, text: `<${el.tagName.toLowerCase()}${classes}> ends at ${
        Math.round(r.right)} px: ${el.textContent.trim().slice(0, 50)}`});
      if (wide.length >= 5) break;
    }
  }
  window.__dpi = window.__dpi || {};
  const dpi = async src => {
    if (!(src in window.__dpi)) {
      window.__dpi[src] = (async () => {
        const bytes = new DataView(await (await fetch(src)).arrayBuffer());
        if (bytes.byteLength < 8 || bytes.getUint32(0) !== 0x89504e47) return null;  // not a PNG
        for (let i = 8; i + 8 <= bytes.byteLength;) {
          const length = bytes.getUint32(i);
          const type = String.fromCharCode(...[4, 5, 6, 7].map(k => bytes.getUint8(i + k)));
          if (type === 'pHYs') {  // pixels per unit, x; unit 1 = metre
            return bytes.getUint8(i + 16) === 1 ? bytes.getUint32(i + 8) * 0.0254 : null;
          }
          if (type === 'IDAT' || type === 'IEND') return null;
          i += 12 + length;
        }
        return null;
      })().catch(() => null);
    }
    return window.__dpi[src];
  };
  const images = [];
  for (const img of document.querySelectorAll('.bd-article img')) {
    const s = getComputedStyle(img), r = img.getBoundingClientRect();
    const content = r.width - ['paddingLeft', 'paddingRight', 'borderLeftWidth',
      'borderRightWidth'].reduce((sum, k) => sum + parseFloat(s[k]), 0);
    images.push({
      src: (img.getAttribute('src') || '').replace(/^data:[^,]{0,40},.*/, 'data: URL')
        .replace(/^blob:.*/, 'blob: URL').slice(-60),
      alt: img.getAttribute('alt'), widget: img.matches('.widget-image'),
      natural: img.naturalWidth, shown: img.checkVisibility() ? content : 0,
      dpi: img.naturalWidth ? await dpi(img.src) : null,
    });
  }
  return {viewport: vw, scrollWidth: root.scrollWidth, wide: wide.map(w => w.text), images};
}"""

# Every control the reader can see that no explorer slider accounts for: marked explorer
# sliders carry data-explorer (test_pages.EXPLORERS_JS marks them first).
DEAD_CONTROLS_JS = """selector => [
  ...document.querySelector('.bd-article').querySelectorAll(selector)
].filter(c => c.checkVisibility() && !c.dataset.explorer
    && !(c.parentElement && c.parentElement.closest(selector)))
  .map(c => {
    const label = c.querySelector('.widget-label');
    const kind = [...c.classList].find(k => k.startsWith('widget-') && k !== 'widget-inline-hbox');
    return `${kind}: ${(label && label.textContent.trim() || c.textContent.trim()).slice(0, 60)}`;
  })"""

# For each marked explorer slider: its readout, and the text of its section before its cell
# (the heading and the prose; code cells and their outputs left out).
EXPLORER_PROSE_JS = """() => [...document.querySelectorAll('[data-explorer^="slider-"]')].map(s => {
  const slider = s;
  const cell = slider.closest('div.cell') || slider;
  const parts = [];
  for (let el = cell.previousElementSibling; el; el = el.previousElementSibling) {
    if (el.matches('div.cell, section')) continue;
    parts.unshift(el.textContent);
  }
  return {
    caption: slider.querySelector('.widget-label').textContent.trim(),
    readout: slider.querySelector('.widget-readout').textContent,
    prose: parts.join(' '),
  };
})"""

# what a view shows: its text, and each image's size and a checksum of its pixels
VIEW_JS = """async view => {
  const images = [...view.querySelectorAll('img')];
  await Promise.all(images.map(img => img.decode().catch(() => null)));
  const sums = images.map(img => {
    const canvas = document.createElement('canvas');
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    const context = canvas.getContext('2d');
    context.drawImage(img, 0, 0);
    const pixels = context.getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0;
    for (let k = 0; k < pixels.length; k += 7) sum = (sum * 31 + pixels[k]) >>> 0;
    return `${canvas.width}x${canvas.height}:${sum}`;
  });
  return view.innerText + '\\n' + sums.join(' ');
}"""
