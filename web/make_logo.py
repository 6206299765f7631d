"""Draw the book's logo and favicon: a smooth curve and its 3-bit quantized staircase.

Run once after changing the design; the images are committed:
    .venv/bin/python web/make_logo.py
book/logo.png and book/favicon.png are named in _config.yml; web/extra/favicon.ico is copied to
the site's root (``html_extra_path``) for the pages that name no icon, such as the redirecting
index.html, where browsers ask for /favicon.ico.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

WEB = Path(__file__).resolve().parent
BOOK = WEB.parent / "book"
BLUE, ORANGE = "#1f5fa8", "#f28e2b"


def draw(path: Path, size_px: int, line_width: float, show_curve: bool) -> None:
    """Save a square PNG of ``size_px`` pixels with a transparent background."""
    x = np.linspace(0.0, 1.0, 400)
    y = 0.5 + 0.42 * np.sin(2 * np.pi * (x - 0.1))
    levels = 7  # 3 bits: 8 codes, 7 steps between them
    y_q = np.round(y * levels) / levels
    fig = plt.figure(figsize=(1, 1), dpi=size_px)
    ax = fig.add_axes((0.06, 0.06, 0.88, 0.88))
    ax.step(x, y_q, where="mid", color=BLUE, linewidth=line_width, solid_capstyle="round")
    if show_curve:  # the real values, drawn over the codes that approximate them
        ax.plot(x, y, color=ORANGE, linewidth=line_width * 0.5, solid_capstyle="round")
    ax.set_xlim(0, 1)
    ax.set_ylim(-0.02, 1.02)
    ax.axis("off")
    fig.savefig(path, transparent=True)
    plt.close(fig)


if __name__ == "__main__":
    draw(BOOK / "logo.png", size_px=256, line_width=5.0, show_curve=True)
    draw(BOOK / "favicon.png", size_px=64, line_width=6.0, show_curve=False)
    (WEB / "extra").mkdir(exist_ok=True)
    icon = Image.open(BOOK / "favicon.png")
    icon.save(WEB / "extra" / "favicon.ico", sizes=[(16, 16), (32, 32), (48, 48)])
