"""Pictures of cross-attention: static heatmaps (matplotlib) and an offline HTML viewer.

Shape legend: L target (query) length, S source (context) length, H heads; a map is (L, S),
rows are target tokens and columns are source tokens.

    heatmap(weights, source_tokens, target_tokens, path="map.png")     # PNG, SVG or PDF
    image_overlay(weights, image, grid=(16, 16), token="cat")          # text-to-image map
    to_html(weights, source_tokens, target_tokens, path="map.html")    # one self-contained page
    view(weights, source_tokens, target_tokens)                        # inline in Jupyter
    to_html([example, ...], "page.html")        # browse examples: dicts of tokens, maps, image
    batch_examples(maps, tokens, images=images, boxes=boxes)  # a model's batch as examples

matplotlib is imported only when a picture is drawn.
"""

from .examples import batch_examples
from .heatmap import heatmap, image_overlay
from .html import Viewer, to_html, view

__all__ = ["Viewer", "batch_examples", "heatmap", "image_overlay", "to_html", "view"]
