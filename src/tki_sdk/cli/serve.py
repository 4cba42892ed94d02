"""``tki serve``: options, checks, and uvicorn. Importing this module costs nothing (argparse only); the
web stack is imported when the command runs."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Sequence

from tki_sdk.common.errors import EXIT_MISSING, EXIT_USAGE, UsageError
from tki_sdk.cli.base import OneLineParser, print_error, run_main

__all__ = ["register", "add_arguments", "config_from_args", "run", "main"]

API_KEY_ENV = "TKI_API_KEY"

EXAMPLES = """\
examples:
  tki serve --model export/ --gallery pacs.gallery                  # http://127.0.0.1:8000/
  TKI_API_KEY=s3cret tki serve --model export/ --gallery pacs.gallery --host 0.0.0.0 --port 8080
  tki serve --model export/ --gallery pacs.gallery --max-batch 32 --max-wait-ms 5 --workers 2

  curl -s http://127.0.0.1:8000/v1/info
  curl -s -F image=@sketch.png -F k=5 -F 'where={"domain":"photo"}' http://127.0.0.1:8000/v1/search
  curl -s -H 'Content-Type: application/json' -d '{"vectors": [[0.1, ...]], "k": 5}' \\
      http://127.0.0.1:8000/v1/search

The gallery folder is watched: when tki embed saves a new version into it (its CURRENT changes), the
service loads it and swaps it in without failing a request. SIGTERM (or Ctrl-C) stops accepting, answers
what is in flight and exits 0. API docs: http://127.0.0.1:8000/docs."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="export folder written by tki-export (tki.json)")
    p.add_argument("--gallery", required=True, metavar="G", help="gallery folder written by tki embed")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000; 0 picks a free one)")
    p.add_argument("--api-key", default=None,
                   help=f"require 'Authorization: Bearer KEY' on /v1 routes (default ${API_KEY_ENV} when set)")
    p.add_argument("--max-batch", type=int, default=32, metavar="N",
                   help="most queries per inference batch (default 32; 1 turns batching off)")
    p.add_argument("--max-wait-ms", type=float, default=5.0, metavar="MS",
                   help="longest wait for more queries after the first of a batch (default 5)")
    p.add_argument("--fixed-wait", action="store_true",
                   help="always wait the full --max-wait-ms for a fuller batch (default: stop waiting as soon as "
                        "no other request is being decoded)")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="image decode threads (default 2)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="onnxruntime threads of the inference call (default: all cores)")
    p.add_argument("--precision", default=None, metavar="P", help="model artifact, e.g. int8, fp32 (default: the export's)")
    p.add_argument("--max-queue", type=int, default=256, metavar="N",
                   help="requests allowed in flight; one more gets 503 + Retry-After (default 256)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="answer or 504 within S seconds (default 30)")
    p.add_argument("--max-body-mb", type=float, default=16.0, metavar="MB", help="request body limit, 413 above (default 16)")
    p.add_argument("--max-images", type=int, default=64, metavar="N", help="images or vectors per request (default 64)")
    p.add_argument("--max-pixels", type=int, default=None, metavar="N",
                   help="refuse images declaring more pixels (default 40,000,000)")
    p.add_argument("--reload-interval", type=float, default=2.0, metavar="S",
                   help="check the gallery's CURRENT every S seconds (default 2; 0: never reload)")
    p.add_argument("--thumbnail-px", type=int, default=256, metavar="PX", help="thumbnail long side (default 256)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="allow browser calls from this origin (repeatable; default: CORS off)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])


def register(subparsers: Any) -> None:
    """Add ``serve`` to the ``tki`` subcommands."""
    p = subparsers.add_parser(
        "serve",
        help="serve a gallery over HTTP: search API, web page, metrics (needs tki-sdk[serve])",
        description="HTTP search service: concurrent queries are micro-batched into one inference call; "
        "a web page at /, Prometheus metrics at /metrics, OpenAPI docs at /docs.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_arguments(p)
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> Any:
    from tki_sdk.serve.config import DEFAULT_MAX_PIXELS, ServeConfig

    model, gallery = Path(args.model), Path(args.gallery)
    if not (model / "tki.json").is_file() and not (model.is_file() and model.name == "tki.json"):
        raise UsageError(f"--model {model} holds no tki.json; pass the folder written by tki-export")
    if not gallery.is_dir():
        raise UsageError(f"--gallery {gallery} is not a folder; build one with tki embed")
    return ServeConfig(
        model=model, gallery=gallery, host=args.host, port=args.port,
        api_key=args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV) or None,
        max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, fixed_wait=args.fixed_wait, workers=args.workers, threads=args.threads,
        precision=args.precision, max_queue=args.max_queue, request_timeout_s=args.timeout,
        max_body_bytes=int(args.max_body_mb * 2**20), max_images=args.max_images,
        max_pixels=args.max_pixels if args.max_pixels is not None else DEFAULT_MAX_PIXELS,
        reload_interval_s=args.reload_interval, thumbnail_px=args.thumbnail_px,
        cors_origins=list(args.cors_origin), log_level=args.log_level,
    )


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from tki_sdk.serve.app import create_app, describe
        from tki_sdk.serve.service import SearchService
    except ImportError as e:
        print_error("tki serve", f"{e.name or e} is not installed; pip install 'tki-sdk[serve]'")
        return EXIT_MISSING
    try:
        config = config_from_args(args)
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        service = SearchService(config)
        app = create_app(config, service)
    except UsageError as e:
        print_error("tki serve", e)
        return e.code
    except (ValueError, OSError) as e:
        print_error("tki serve", e)
        return EXIT_USAGE
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"tki serve: warning: listening on {config.host} without an API key; anyone who can reach this "
              f"port can search (set --api-key or ${API_KEY_ENV})", file=sys.stderr)
    print(describe(config, service), file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
        timeout_graceful_shutdown=config.request_timeout_s + 5, lifespan="on",
    ))
    # uvicorn drains on SIGTERM / SIGINT, then raises the signal again for the handler it found: make that
    # handler a clean exit, so a drained shutdown ends with status 0.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0 if server.started else 1


def _exit_cleanly(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m tki_sdk.cli.serve`` (same options as ``tki serve``)."""
    parser = OneLineParser(prog="tki serve", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    return run_main("tki serve", lambda: run(parser.parse_args(argv)))


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
