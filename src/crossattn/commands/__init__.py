"""One module per `crossattn` command: `add_arguments(parser)` and `run(args)`."""
