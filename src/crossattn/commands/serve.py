"""`crossattn serve --model DIR`: a local page that translates a typed sentence and aligns it.

The page (see `crossattn.viz.server`) sends the sentence to the model and shows the translation
in the interactive viewer: the cross-attention of every decoder layer and head, with the word
alignment drawn as links. It listens on 127.0.0.1 unless ``--host`` says otherwise.
"""

from __future__ import annotations

import argparse
import sys

from ..cli import CommandError, port, positive_int
from ._compute_type import add_compute_type_argument


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="DIR", help="a model directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=port, default=8000, help="TCP port (default 8000; 0: any)")
    parser.add_argument(
        "--beam", type=positive_int, default=4, help="beam size (default 4; 1 greedy)"
    )
    parser.add_argument(
        "--max-words", type=positive_int, default=64, help="longest sentence accepted (default 64)"
    )
    parser.add_argument(
        "--alignment-format",
        choices=("pharaoh", "pairs"),
        default="pharaoh",
        help="the answer's alignment: a Pharaoh string '0-0 1-2' (as translate --json gives it) "
        "or a list of [i, j] pairs",
    )
    parser.add_argument("--open", action="store_true", help="open the page in the web browser")
    add_compute_type_argument(parser)


def run(args: argparse.Namespace) -> int:
    from ..viz.server import make_server
    from ._common import load_translator

    translator = load_translator(args.model, compute_type=args.compute_type)
    try:
        server = make_server(
            translator,
            args.host,
            args.port,
            max_words=args.max_words,
            beam=args.beam,
            alignment_format=args.alignment_format,
        )
    except (OSError, ValueError, OverflowError) as err:
        raise CommandError(
            f"cannot serve on --host {args.host} --port {args.port}: {err}; choose another "
            "--port (0: any free one) or --host"
        ) from err
    host, port = server.server_address[:2]
    shown = f"[{host}]" if ":" in str(host) else host
    url = f"http://{shown}:{port}/"
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}, reachable from other machines", file=sys.stderr)
    print(f"serving {args.model} at {url} (Ctrl-C to stop)", flush=True)
    if args.open:
        import webbrowser

        webbrowser.open(url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
