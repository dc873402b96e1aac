"""Parallel data: the toy translation corpus with gold alignments, readers for users' files, and
word links (`Link`, source index first) with the Pharaoh format they are written in."""

from .parallel import (
    ParallelData,
    ParallelExample,
    ParallelFormatError,
    format_pharaoh,
    read_alignment_file,
    read_parallel,
    tokenize,
)
from .pharaoh import Link, PossibleLink, parse_pharaoh
from .toy_translation import ToyCorpus, generate_corpus, language_rules, write_corpus

__all__ = [
    "Link",
    "ParallelData",
    "ParallelExample",
    "ParallelFormatError",
    "PossibleLink",
    "ToyCorpus",
    "format_pharaoh",
    "generate_corpus",
    "language_rules",
    "parse_pharaoh",
    "read_alignment_file",
    "read_parallel",
    "tokenize",
    "write_corpus",
]
