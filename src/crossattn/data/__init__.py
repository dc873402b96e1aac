"""Parallel data: the toy translation corpus with gold alignments, and readers for users' files."""

from .parallel import (
    ParallelData,
    ParallelExample,
    ParallelFormatError,
    format_pharaoh,
    read_alignment_file,
    read_parallel,
    tokenize,
)
from .toy_translation import ToyCorpus, generate_corpus, language_rules, write_corpus

__all__ = [
    "ParallelData",
    "ParallelExample",
    "ParallelFormatError",
    "ToyCorpus",
    "format_pharaoh",
    "generate_corpus",
    "language_rules",
    "read_alignment_file",
    "read_parallel",
    "tokenize",
    "write_corpus",
]
