"""Command line: ``python -m embedded prepare`` and ``python -m embedded serve [--port P]``."""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from .server import EmbeddedServer, EmbeddedServerError
from .weights import WeightsError, ensure_model


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m embedded",
        description="Refed's embedded model server: real vLLM on the CPU (SmolLM2-135M-Instruct).",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="cache folder (default: $REFED_CACHE_DIR, $XDG_CACHE_HOME/refed or ~/.cache/refed)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    prepare = sub.add_parser("prepare", help="download and convert the weights; print the folder")
    prepare.add_argument("--force", action="store_true", help="rebuild even if already prepared")

    serve = sub.add_parser("serve", help="start the server, print its base URL, run until Ctrl-C")
    serve.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--max-model-len", type=int, default=4096)
    serve.add_argument("--kv-cache-gib", type=int, default=1)
    serve.add_argument("--startup-timeout", type=float, default=300.0)
    serve.add_argument("--log-file", type=Path, default=None)
    return parser


def _serve(args: argparse.Namespace) -> int:
    def _on_sigterm(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    # SIGTERM cleans up like Ctrl-C does (also while the server is still starting).
    signal.signal(signal.SIGTERM, _on_sigterm)
    server = EmbeddedServer(
        host=args.host,
        port=args.port,
        max_model_len=args.max_model_len,
        kv_cache_gib=args.kv_cache_gib,
        startup_timeout=args.startup_timeout,
        log_file=args.log_file,
        cache_dir=args.cache_dir,
    )
    with server:
        print(server.base_url, flush=True)
        print(
            f"model name: {server.model}; press Ctrl-C to stop (log: {server.log_path})",
            file=sys.stderr,
            flush=True,
        )
        try:
            while server.running:
                time.sleep(1.0)
            print(f"embedded vLLM exited unexpectedly (log: {server.log_path})", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            pass
        print("stopping embedded vLLM …", file=sys.stderr, flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    try:
        if args.command == "prepare":
            print(ensure_model(args.cache_dir, force=args.force), flush=True)
            return 0
        return _serve(args)
    except (WeightsError, EmbeddedServerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
