"""crossattn's tests, in folders that mirror src/crossattn.

A package (as is every folder) so that two folders may hold test modules of one name and
every module imports the shared helpers as ``tests.conftest``."""
