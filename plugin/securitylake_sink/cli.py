"""The command line: ``run``, ``check-config`` and ``demo``; exit 0 on success, 2 on bad config."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence

from securitylake_sink import __version__
from securitylake_sink.config import Config, load_config
from securitylake_sink.errors import ConfigError, SinkError
from securitylake_sink.telemetry import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securitylake-sink",
        description="Receive logs from Fluent Bit, Fluentd and Vector; "
        "land them in Amazon Security Lake as OCSF Parquet.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="serve until SIGTERM/SIGINT, then flush and exit")
    run.add_argument("-c", "--config", required=True, help="the YAML config file")
    run.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    check = sub.add_parser("check-config", help="validate a config without network I/O and print the plan")
    check.add_argument("-c", "--config", required=True, help="the YAML config file")
    check.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    demo = sub.add_parser("demo", help="run the sink on a temporary local lake with sample records")
    demo.add_argument("--lake", help="directory for the demo lake (default: a new temporary directory)")
    demo.add_argument("--records", type=int, default=5000, help="how many records to send")
    return parser


def _config_errors(exc: ConfigError) -> int:
    for issue in exc.issues:
        print(f"error: {issue}", file=sys.stderr)
    return EXIT_CONFIG


def _load(path: str) -> Config:
    return load_config(path)


def _check_config(path: str, as_json: bool) -> int:
    from securitylake_sink.plan import resolve_plan  # noqa: PLC0415

    try:
        plan = resolve_plan(_load(path))
    except ConfigError as exc:
        return _config_errors(exc)
    for warning in plan["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if as_json:
        print(json.dumps(plan, indent=2))
        return EXIT_OK
    dest, auth = plan["destination"], plan["auth"]
    where = dest["path"] if dest["kind"] == "file" else f"s3://{dest['bucket']}/{dest['prefix']}"
    print(f"config {path} is valid")
    print(f"  destination  {dest['kind']} {where}")
    region = dest["region"] or "(looked up at start-up)"
    print(f"  region       {region} (from {dest['region_source']}), partition {dest['partition']}")
    print(f"  account_id   {dest['account_id']}")
    print(f"  auth         {auth['mode']}" + (f" {auth['role_arn']}" if auth["role_arn"] else ""))
    for source in dest["sources"]:
        name = f" ({source['class_name']})" if "class_name" in source else ""
        print(f"  class {source['class_uid']}{name} -> {source['location']}")
    print(f"  forward      {plan['listen']['forward']['address']}")
    print(f"  spool        {plan['spool']['path']}")
    return EXIT_OK


def _run(path: str, level: str) -> int:
    from securitylake_sink.app import run  # noqa: PLC0415

    setup_logging(level)
    try:
        config = _load(path)
    except ConfigError as exc:
        return _config_errors(exc)
    try:
        return asyncio.run(run(config))
    except SinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config, args.json)
    if args.command == "run":
        return _run(args.config, args.log_level)
    from securitylake_sink.demo import demo  # noqa: PLC0415

    setup_logging("warning")
    return demo(args.lake, args.records)
