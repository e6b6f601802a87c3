"""`musicssl dashboard SWEEP`: build a sweep's report (or its table as CSV / LaTeX) from any MLflow tracking URI,
log the page to the sweep's parent run, and optionally keep it fresh while the sweep runs (``--live``)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from musicssl.paths import default_report, default_state_dir

FORMATS = ("html", "csv", "latex")
SUFFIX = {"html": ".html", "csv": ".csv", "latex": ".tex"}
SUMMARY_HELP = "last (the last probed checkpoint), best (each task's best checkpoint) or step:N (the checkpoint at N)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The command's options."""
    parser.add_argument("sweep", help="sweep name (the latest parent run of that name) or parent run id")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI; default $MLFLOW_TRACKING_URI, else the sqlite "
                                               "DB in the state folder ($MUSICSSL_HOME or ./.musicssl)")
    parser.add_argument("-o", "--output", help="output path; default dashboards/<sweep>.<html|csv|tex> in a "
                                               "checkout, else <state>/dashboards/")
    parser.add_argument("--format", choices=FORMATS, default="html",
                        help="html: the whole report; csv / latex: the ablation table with the page's numbers")
    parser.add_argument("--summary", default="last", help=f"which checkpoint's score a trial counts with: "
                                                          f"{SUMMARY_HELP}")
    parser.add_argument("--live", type=int, metavar="SECONDS", nargs="?", const=30,
                        help="rebuild every SECONDS (default 30) while the sweep's parent run is RUNNING; the page "
                             "reloads itself; Ctrl-C stops")
    parser.add_argument("--no-log", action="store_true", help="do not log the page to the sweep's parent run")


def tracking_uri(explicit: str | None) -> str:
    """``--tracking-uri``, else ``$MLFLOW_TRACKING_URI`` (as the sweep itself), else the state folder's sqlite DB."""
    from musicssl.tracking.mlflow import resolve_tracking_uri

    return resolve_tracking_uri(explicit, default_state_dir())


def _is_run_id(text: str) -> bool:
    return len(text) == 32 and all(c in "0123456789abcdef" for c in text)


def run(args: argparse.Namespace) -> int:
    """Build once, or keep rebuilding with ``--live``; exit 2 with a one-line message on a bad argument."""
    from mlflow import MlflowClient

    from musicssl.dashboards.report import build_report, resolve_parent
    from musicssl.dashboards.summary import Summary

    try:
        summary = Summary.parse(args.summary)
        uri = tracking_uri(args.tracking_uri)
        parent = resolve_parent(uri, **({"parent_run_id": args.sweep} if _is_run_id(args.sweep)
                                        else {"sweep_name": args.sweep}))
    except (ValueError, LookupError) as e:
        print(f"musicssl dashboard: {e}", file=sys.stderr)
        return 2
    client = MlflowClient(uri)
    name = client.get_run(parent).data.tags.get("musicssl.sweep", args.sweep)
    out = Path(args.output) if args.output else default_report(name, default_state_dir()).with_suffix(
        SUFFIX[args.format])
    out = out.resolve()

    def build(refresh: int | None) -> Path:
        return build_report(uri, out, parent_run_id=parent, summary=summary, fmt=args.format, refresh_s=refresh)

    if args.live and args.format == "html":
        print(f"dashboard (live, every {args.live} s; open it in a browser, Ctrl-C stops): {out}")
        try:
            while client.get_run(parent).info.status == "RUNNING":
                build(args.live)
                time.sleep(args.live)
        except KeyboardInterrupt:
            print("live mode stopped")
    path = build(None)
    if args.format == "html" and not args.no_log:
        client.log_artifact(parent, str(path))
    print(f"dashboard: {path}" + ("" if args.format != "html" or args.no_log else f"  (logged to run {parent})"))
    return 0
