"""`python -m crossattn ...` (and `torchrun -m crossattn ...`) runs the command line."""

from .cli import main

raise SystemExit(main())
