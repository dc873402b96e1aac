"""The one colour scale shared by the static pictures and the interactive viewer.

A sequential ramp from paper white (weight 0) through yellow and orange to a deep wine red
(weight 1): low weights fade into the background, strong ones stand out in print and on screen.
"""

from __future__ import annotations

# (position in [0, 1], "#rrggbb")
COLOR_STOPS: list[tuple[float, str]] = [
    (0.00, "#fbfaf7"),
    (0.08, "#fff1b8"),
    (0.22, "#fed26b"),
    (0.40, "#fca047"),
    (0.58, "#ef6a32"),
    (0.76, "#c92d37"),
    (1.00, "#5b0f3a"),
]

SURE_COLOR = "#1f6feb"  # gold links: a cool blue that reads on the warm scale
POSSIBLE_COLOR = "#1f6feb"
PREDICTED_COLOR = "#0f9d58"


def colormap():
    """The scale as a matplotlib colormap (matplotlib is imported here, not at module import)."""
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list("crossattn", COLOR_STOPS, N=256)
