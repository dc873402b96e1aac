"""Parallel data: the toy translation corpus with gold alignments, and readers for users' files."""

from .parallel import ParallelData, ParallelExample, read_parallel
from .toy_translation import ToyCorpus, generate_corpus, write_corpus

__all__ = [
    "ParallelData",
    "ParallelExample",
    "ToyCorpus",
    "generate_corpus",
    "read_parallel",
    "write_corpus",
]
