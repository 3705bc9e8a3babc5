"""`gradatim operator`: run the kopf operator in this process, with a liveness endpoint."""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import getpass
import logging
import os
import socket

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


def own_identity() -> str:
    """The operator's kopf identity. kopf builds it from POD_ID, else from getpass.getuser(), which raises for a uid
    with no passwd entry: the images run as uid 65532 and have none (nor does a uid picked by OpenShift), and the
    operator would crash-loop at start. The Deployment sets POD_ID; without it, the uid names the user."""
    pod = os.environ.get("POD_ID")
    if pod:
        return pod
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # KeyError up to Python 3.12, OSError from 3.13
        user = f"uid{os.getuid()}"
    return f"{user}@{socket.gethostname()}"


def run(namespaces: list[str] | None, liveness: str, verbose: bool = False) -> int:
    _fewer_malloc_arenas()
    os.environ["GRADATIM_OPERATOR_NAMESPACES"] = ",".join(namespaces or [])  # read by the handlers' resync
    import gradatim.operator  # noqa: F401  (registers the handlers)

    kopf.configure(verbose=verbose)  # kopf's logging setup also formats ours
    logging.getLogger("gradatim").setLevel(logging.DEBUG if verbose else logging.INFO)
    asyncio.run(
        kopf.operator(
            clusterwide=not namespaces, namespaces=namespaces or [], liveness_endpoint=liveness or None, standalone=True,
            identity=own_identity(),  # type: ignore[arg-type]  # kopf's Identity is a NewType of str
        )
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m gradatim.operator")
    sub = parser.add_subparsers(dest="command", required=True)
    add_operator_command(sub)
    args = parser.parse_args(["operator", *__import__("sys").argv[1:]])
    return args.func(args)
