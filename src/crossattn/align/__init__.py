"""Word alignments: alignments read off cross-attention maps, and the alignment error rate.

The package, one concept a module:

* `crossattn.align.config`: `ExtractionConfig`, how an attention map becomes links, and
  `DEFAULT_EXTRACTION`, which needs no gold;
* `crossattn.align.extract`: `extract_alignment` and `alignment_scores` on one pair's
  ``(layers, heads, T, S)`` map (the layout of its rows and columns is described there), and
  `word_links_from_subwords`;
* `crossattn.align.metrics`: `aer` (Och & Ney 2003) with precision and recall, and
  `read_alignments`;
* `crossattn.align.select`: `select_extraction`, the config tuned on a dev split with gold;
* `crossattn.align.agreement`: `select_by_agreement`, the config chosen without gold by the
  agreement of two translation directions;
* `crossattn.align.symmetrize`: `symmetrize`, two directions' links combined into one (import
  it from there: the package keeps the name for the module);
* `crossattn.align.spec`: `parse_extraction`, the ``--extraction`` mini-language of
  ``crossattn align``.

Links are `crossattn.data.pharaoh.Link` pairs ``(source, target)``, 0-indexed.
"""

from ..data.parallel import read_alignment_file as read_alignment_file
from ..data.pharaoh import Link as Link
from ..data.pharaoh import parse_pharaoh as parse_pharaoh
from .agreement import one_best_agreement, select_by_agreement
from .config import DEFAULT_EXTRACTION, ExtractionConfig
from .config import METHODS as METHODS
from .config import SHIFTS as SHIFTS
from .extract import alignment_scores, extract_alignment, word_links_from_subwords
from .metrics import AERResult, aer, read_alignments
from .select import select_extraction
from .spec import parse_extraction

__all__ = [
    "DEFAULT_EXTRACTION",
    "AERResult",
    "ExtractionConfig",
    "aer",
    "alignment_scores",
    "extract_alignment",
    "one_best_agreement",
    "parse_extraction",
    "read_alignments",
    "select_by_agreement",
    "select_extraction",
    "word_links_from_subwords",
]
