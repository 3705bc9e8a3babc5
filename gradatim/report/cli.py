"""`gradatim report PIPELINE`: render the pipeline's report and publish it to S3 next to its outputs."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime, timezone
from pathlib import Path


def add_report_command(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="render a pipeline's report (HTML with plots) and publish it to S3 next to its outputs")
    parser.add_argument("pipeline", help="TrainingPipeline name")
    parser.add_argument("-n", "--namespace", default=None, help="default: the kubeconfig context's namespace, else `default`")
    parser.add_argument("--kubeconfig", default=None, help="default: $KUBECONFIG, else ~/.kube/config")
    parser.add_argument("--out", type=Path, default=None, help="directory for index.html and the plots (default: ./gradatim-report/<pipeline>)")
    parser.add_argument("--no-upload", action="store_true", help="write the files here only, not to S3")
    parser.set_defaults(func=run_report)


def run_report(args: argparse.Namespace) -> int:
    # Imported here: matplotlib (the trainer extra) is needed by this command only.
    from botocore.exceptions import BotoCoreError, ClientError
    from kubernetes import config

    from gradatim.report.collect import ReportError, collect_report, publish
    from gradatim.report.render import render_html

    namespace = args.namespace or context_namespace(args.kubeconfig)
    api = config.new_client_from_config(config_file=args.kubeconfig)
    try:
        collected = collect_report(api, namespace, args.pipeline, datetime.now(timezone.utc))
    except ReportError as err:
        print(f"gradatim report: {err}", file=sys.stderr)
        return 1
    finally:
        api.close()
    page = render_html(collected.report, args.out or Path("gradatim-report") / args.pipeline)
    print(f"Wrote {page}")
    if args.no_upload:
        return 0
    try:
        print(f"Published {publish(collected.store, page.parent, collected.uri)}")
    except (BotoCoreError, ClientError) as err:
        print(f"gradatim report: cannot write the report to {collected.uri}: {err}", file=sys.stderr)
        return 1
    return 0


def context_namespace(kubeconfig: str | None) -> str:
    """The namespace of the kubeconfig's current context, as kubectl picks it."""
    from kubernetes import config

    _, current = config.list_kube_config_contexts(config_file=kubeconfig)
    return (current or {}).get("context", {}).get("namespace") or "default"
