"""``tki serve``: options, checks, and uvicorn. Importing this module costs nothing (argparse only); the
web stack is imported when the command runs."""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from dataclasses import MISSING, fields
from typing import Any, Mapping, Sequence

from tki_sdk.common.errors import EXIT_DAMAGED, EXIT_MISSING, EXIT_USAGE, ConfigError, UsageError
from tki_sdk.cli.base import OneLineParser, print_error, run_main
from tki_sdk.serve.config import Option, ServeConfig, option_of

__all__ = ["register", "add_arguments", "config_from_args", "flag_of", "run", "main"]

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
    """Every :class:`ServeConfig` field as an option: flag, help, unit and the default shown all come from the
    field (``ServeConfig``'s metadata), so nothing here restates a default."""
    for f in fields(ServeConfig):
        opt: Option = f.metadata["option"]
        dest = f.name
        if opt.kind == "flag":
            p.add_argument(opt.flag, dest=dest, action="store_true", help=opt.help)
        elif opt.kind == "off":
            p.add_argument(opt.flag, dest=dest, action="store_false", help=opt.help)
        elif opt.kind == "append":
            p.add_argument(opt.flag, dest=dest, action="append", default=[], metavar=opt.metavar, help=opt.help)
        elif f.default is MISSING and f.default_factory is MISSING:
            p.add_argument(opt.flag, dest=dest, required=True, metavar=opt.metavar, help=opt.help)
        else:
            default = f.default
            if opt.scale and default is not None:
                default = default / opt.scale
                default = int(default) if float(default).is_integer() else default
            kind = float if opt.scale else _TYPES.get(f.type if isinstance(f.type, str) else "", str)
            p.add_argument(opt.flag, dest=dest, type=kind, default=default, metavar=opt.metavar,
                           choices=list(opt.choices) if opt.choices else None, help=opt.help)


#: argparse type of each field annotation (``from __future__ import annotations`` keeps them as text).
_TYPES: dict[str, Any] = {"int": int, "float": float, "int | None": int, "float | None": float, "str": str,
                          "str | None": str, "Path": str, "Path | None": str}


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


def flag_of(field_name: str) -> str:
    """The option of ``tki serve`` that sets the :class:`ServeConfig` field ``field_name``."""
    return option_of(field_name).flag


def config_from_args(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """The :class:`ServeConfig` of parsed options; :class:`UsageError` (one line naming the option, exit 2).

    The API key comes from ``--api-key``, else from ``$TKI_API_KEY`` when that is set (even to an empty
    value, which is refused rather than read as "no key")."""
    env = os.environ if environ is None else environ
    model, gallery = Path(args.model), Path(args.gallery)
    if not (model / "tki.json").is_file() and not (model.is_file() and model.name == "tki.json"):
        raise UsageError(f"--model {model} holds no tki.json; pass the folder written by tki-export")
    if not gallery.is_dir():
        raise UsageError(f"--gallery {gallery} is not a folder; build one with tki embed")
    values: dict[str, Any] = {}
    for f in fields(ServeConfig):
        value = getattr(args, f.name)
        scale = f.metadata["option"].scale
        values[f.name] = int(value * scale) if scale and value is not None else value
    key_source = flag_of("api_key")
    if values["api_key"] is None and API_KEY_ENV in env:
        values["api_key"], key_source = env[API_KEY_ENV], f"${API_KEY_ENV}"
    try:
        return ServeConfig(**values)
    except ConfigError as e:
        source = key_source if e.field == "api_key" else flag_of(e.field)
        raise UsageError(f"{source} {e.reason}") from None


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from tki_sdk.runtime.engine.artifact_check import ArtifactCheckError
        from tki_sdk.runtime.index.store import GalleryDamagedError
        from tki_sdk.serve.app import create_app, describe
        from tki_sdk.serve.connections import ConnectionGuard, configure_log_throttle, raise_file_limit
        from tki_sdk.serve.service import SearchService
    except ImportError as e:
        print_error("tki serve", f"{e.name or e} is not installed; pip install 'tki-sdk[serve]'")
        return EXIT_MISSING
    try:
        config = config_from_args(args)
        logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        configure_log_throttle()
        raise_file_limit(config.max_connections, config.backlog)
        guard = ConnectionGuard(config.max_connections, backlog=config.backlog, idle_s=config.keep_alive_s)
        service = SearchService(config)
        app = create_app(config, service)
    except UsageError as e:
        print_error("tki serve", e)
        return e.code
    except (ArtifactCheckError, GalleryDamagedError) as e:
        print_error("tki serve", e)
        return EXIT_DAMAGED
    except (ValueError, OSError) as e:
        print_error("tki serve", e)
        return EXIT_USAGE
    if config.host not in ("127.0.0.1", "localhost", "::1") and not config.api_key:
        print(f"tki serve: warning: listening on {config.host} without an API key; anyone who can reach this "
              f"port can search (set {flag_of('api_key')} or ${API_KEY_ENV})", file=sys.stderr)
    print(describe(config, service), file=sys.stderr)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=config.log_level, access_log=False,
        timeout_graceful_shutdown=config.request_timeout_s + 5, lifespan="on", http=guard.protocol_class(),
        backlog=config.backlog, timeout_keep_alive=max(1, round(config.keep_alive_s)),
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
    sys.exit(main())
