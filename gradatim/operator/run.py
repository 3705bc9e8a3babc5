"""`gradatim operator`: run the kopf operator in this process, with a liveness endpoint."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import logging
import os

import kopf

M_ARENA_MAX = -8  # mallopt's parameter number (malloc.h)


def add_operator_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("operator", help="run the operator (kopf) against the current kubeconfig")
    parser.add_argument("-n", "--namespace", action="append", default=None, help="watch only these namespaces (default: all)")
    parser.add_argument("--liveness", default="http://0.0.0.0:8081/healthz", help="liveness endpoint URL ('' to disable)")
    parser.add_argument("--verbose", action="store_true")
    parser.set_defaults(func=lambda args: run(args.namespace, args.liveness, args.verbose))


def _fewer_malloc_arenas() -> None:
    """glibc gives each thread that allocates its own malloc arena (up to 8 per core); the workers and kopf's
    executor threads parse objects in turn, and the arenas hold on to freed memory. Two are plenty here."""
    try:
        ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, 2)
    except (OSError, AttributeError):  # not glibc
        pass


def run(namespaces: list[str] | None, liveness: str, verbose: bool = False) -> int:
    _fewer_malloc_arenas()
    os.environ["GRADATIM_OPERATOR_NAMESPACES"] = ",".join(namespaces or [])  # read by the handlers' resync
    import gradatim.operator  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)  # kopf's logging setup also formats ours
    logging.getLogger("gradatim").setLevel(logging.DEBUG if verbose else logging.INFO)
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces, namespaces=namespaces or [], liveness_endpoint=liveness or None, standalone=True,
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gradatim.operator")
    sub = parser.add_subparsers(dest="command", required=True)
    add_operator_command(sub)
    args = parser.parse_args(["operator", *__import__("sys").argv[1:]])
    return args.func(args)
