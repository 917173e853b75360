"""Run plots people can read: cell text contrasts with its cell, warnings travel in a corner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurestore.plots import plot_confusion, stamp, text_color


@pytest.mark.parametrize("cmap", ["Blues", "viridis", "magma", "Greys"])
def test_cell_text_contrasts_with_every_cell(cmap: str) -> None:
    """Issue 14.5: on every colour of the map, the text colour is the better of black and
    white, with a WCAG contrast ratio of at least 4.5:1."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    image = ax.imshow(np.array([[0, 100]]), cmap=cmap, vmin=0, vmax=100)

    def luminance(rgb: tuple[float, ...]) -> float:
        lin = [c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4 for c in rgb[:3]]
        return 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2]

    for v in np.linspace(0, 100, 41):
        cell = luminance(image.cmap(image.norm(v)))
        black, white = (cell + 0.05) / 0.05, 1.05 / (cell + 0.05)
        chosen = black if text_color(image, v) == "black" else white
        assert chosen == max(black, white) and chosen >= 4.5, (cmap, v)


def test_confusion_plot_and_corner_note(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    plot_confusion([[5, 1], [0, 9]], ["NORMAL", "PNEUMONIA"], tmp_path / "c.png", title="t",
                   note="RANDOM WEIGHTS")  # fmt: skip
    assert (tmp_path / "c.png").stat().st_size > 1000
    fig = Figure()
    stamp(fig, "RANDOM WEIGHTS / SYNTHETIC DATA")
    assert [t.get_text() for t in fig.texts] == ["\u26a0 RANDOM WEIGHTS / SYNTHETIC DATA"]
    stamp(Figure(), None)  # nothing to say: no text, no error
