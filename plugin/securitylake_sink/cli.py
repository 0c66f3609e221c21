"""The command line: ``run``, ``check-config``, ``doctor``, ``replay``, ``map``, ``iam-policy``, ``sources``,
``spool`` and ``demo``; exit 0 on success, 2 on bad config."""

from __future__ import annotations

__all__ = ["main"]

import argparse
import asyncio
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from securitylake_sink import __version__
from securitylake_sink.config import Config, load_config
from securitylake_sink.errors import ConfigError, SinkError
from securitylake_sink.telemetry import setup_logging

EXIT_OK, EXIT_FAILED, EXIT_CONFIG = 0, 1, 2
WORKERS_HELP = (
    "worker processes sharing the listening ports (SO_REUSEPORT, Linux); overrides the config's workers "
    "(default 1: one process)"
)


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
    run.add_argument(
        "--log-level", choices=["debug", "info", "warning", "error"], help="overrides logging.level of the config"
    )
    run.add_argument("--workers", type=int, metavar="N", help=WORKERS_HELP)
    check = sub.add_parser("check-config", help="validate a config without network I/O and print the plan")
    check.add_argument("-c", "--config", required=True, help="the YAML config file")
    check.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    check.add_argument("--workers", type=int, metavar="N", help="the worker count run --workers would get")
    doctor = sub.add_parser("doctor", help="live checks: credentials, role, bucket region, write access")
    doctor.add_argument("-c", "--config", required=True, help="the YAML config file")
    replay = sub.add_parser("replay", help="run files (plain or gzip) or stdin through the pipeline into the lake")
    replay.add_argument("-c", "--config", required=True, help="the YAML config file (its listeners stay off)")
    replay.add_argument("--tag", required=True, help="the tag the records get, as a shipper would set it")
    replay.add_argument("--format", choices=["ndjson", "msgpack", "lines"], default="ndjson", help="default ndjson")
    replay.add_argument("--chunk-records", type=int, default=1000, help="records per spooled chunk")
    replay.add_argument("--progress-secs", type=float, default=5.0, help="between progress lines when not on a TTY")
    replay.add_argument("--log-level", choices=["debug", "info", "warning", "error"], default="warning")
    replay.add_argument("files", nargs="+", metavar="FILE", help="files to replay; - reads standard input")
    mapping = sub.add_parser("map", help="map ndjson or msgpack records to OCSF JSON lines (dead letters on stderr)")
    which = mapping.add_mutually_exclusive_group(required=True)
    which.add_argument("--rule", help="a built-in rule name or a rule file")
    which.add_argument("-c", "--config", help="a config file: its mappings, fallback and OCSF version apply")
    which.add_argument("--list", action="store_true", help="list the built-in rules and their OCSF classes")
    mapping.add_argument("--tag", help="the records' tag (with -c it picks the mappings that apply)")
    mapping.add_argument("--msgpack", action="store_true", help="read msgpack maps or [time, map] entries")
    mapping.add_argument("--ocsf-version", help="with --rule or --list: the OCSF version (default 1.1.0)")
    mapping.add_argument("file", nargs="?", metavar="FILE", help="the input; stdin when absent or -")
    iam = sub.add_parser("iam-policy", help="print the least-privilege IAM policy and trust policy of the writer role")
    iam.add_argument("-c", "--config", required=True, help="the YAML config file")
    iam.add_argument("--principal", help="the ARN the trust policy trusts (default: the root of the role's account)")
    iam.add_argument("--json", action="store_true", help="print both policies as one JSON object")
    sources = sub.add_parser("sources", help="print the AWS CLI commands that register the custom sources")
    sources.add_argument("-c", "--config", required=True, help="the YAML config file")
    sources.add_argument("--principal", help="the log provider's account id or ARN (default: the role's account)")
    sources.add_argument(
        "--crawler-role-arn", help="the Glue crawler role ARN (default: $CRAWLER_ROLE_ARN at run time)"
    )
    sources.add_argument("--json", action="store_true", help="print the sources as one JSON object")
    _spool_parser(sub)
    demo = sub.add_parser("demo", help="run the sink on a temporary local lake with sample records")
    demo.add_argument("--lake", help="directory for the demo lake (default: a new temporary directory)")
    demo.add_argument("--records", type=int, default=5000, help="how many records to send")
    return parser


def _spool_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    where = argparse.ArgumentParser(add_help=False)
    which = where.add_mutually_exclusive_group(required=True)
    which.add_argument("-c", "--config", help="the YAML config file (its spool.path)")
    which.add_argument("--spool", metavar="PATH", help="the spool directory")
    spool = sub.add_parser("spool", help="list what a spool holds; retry or drop quarantined items")
    actions = spool.add_subparsers(dest="action", required=True, metavar="ACTION")
    ls = actions.add_parser("ls", parents=[where], help="open, sealed and quarantined batches, log bytes, backlog")
    ls.add_argument("--json", action="store_true", help="print everything as one JSON object")
    retry = actions.add_parser(
        "retry", parents=[where], help="move quarantined batches back to sealed/ (a running sink picks them up)"
    )
    drop = actions.add_parser("drop", parents=[where], help="delete quarantined items for good")
    drop.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    for action in (retry, drop):
        action.add_argument("--all", action="store_true", help="every quarantined item")
        action.add_argument("ids", nargs="*", metavar="ID", help="quarantined item ids, as `spool ls` shows them")


def _spool(args: argparse.Namespace) -> int:
    from securitylake_sink import spoolcli  # noqa: PLC0415

    if args.spool:
        path = Path(args.spool)
    else:
        try:
            path = _load(args.config).spool.path
        except ConfigError as exc:
            return _config_errors(exc)
    try:
        if args.action == "ls":
            return spoolcli.list_spool(path, sys.stdout, sys.stderr, as_json=args.json)
        if args.action == "retry":
            return spoolcli.retry_items(path, args.ids, args.all, sys.stdout, sys.stderr)
        return spoolcli.drop_items(
            path, args.ids, args.all, yes=args.yes, answer=sys.stdin, out=sys.stdout, err=sys.stderr
        )
    except OSError as exc:
        print(f"error: {exc.filename or path}: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_FAILED


def _config_errors(exc: ConfigError) -> int:
    for issue in exc.issues:
        print(f"error: {issue}", file=sys.stderr)
    return EXIT_CONFIG


def _load(path: str) -> Config:
    return load_config(path)


def _with_workers(config: Config, workers: int | None) -> Config:
    """The config with ``--workers`` applied (it wins over ``workers:``); ConfigError naming the
    flag or the option when the count breaks a rule."""
    from securitylake_sink.workers import check_reuse_port, worker_issues  # noqa: PLC0415

    option = "workers" if workers is None else "--workers"
    count = config.workers if workers is None else workers
    issues = worker_issues(config, count, option)
    if count > 1 and not issues and (issue := check_reuse_port(option)) is not None:
        issues.append(issue)
    if issues:
        raise ConfigError(issues)
    return config if workers is None else config.model_copy(update={"workers": count})


def _check_config(path: str, as_json: bool, workers: int | None) -> int:
    from securitylake_sink.plan import resolve_plan  # noqa: PLC0415

    try:
        plan = resolve_plan(_with_workers(_load(path), workers))
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
    limit = plan["spool"]["max_bytes"]
    print(f"  spool limit  {limit} bytes" if limit is not None else "  spool limit  10% of free disk (at start-up)")
    dead = plan["dead_letter"]
    if dead["kind"] == "s3":
        print(
            f"  dead letters {dead['location']} (from {dead['spool_directory']}, shipped every "
            f"{dead['max_age_secs']:g} s or {dead['max_bytes']} bytes)"
        )
    else:
        print(f"  dead letters {dead['location']}")
    _print_workers(plan["workers"])
    return EXIT_OK


def _print_workers(workers: dict[str, Any]) -> None:
    if workers["count"] > 1:
        print(f"  workers      {workers['count']} processes sharing the listening ports (SO_REUSEPORT)")
        print("               spool limit split evenly; worker i serves metrics on the metrics port + i")
        for worker in workers["workers"]:
            metrics = f", metrics {worker['metrics']}" if worker["metrics"] else ""
            print(f"    worker {worker['index']:<3} spool {worker['spool']}{metrics}")
    for orphan in workers["orphan_spools"]:
        print(f"  orphan spool {orphan} (left by an earlier run; drained into the lake at start)")


def _doctor(path: str) -> int:
    from securitylake_sink.doctor import doctor  # noqa: PLC0415

    setup_logging("warning")
    try:
        config = _load(path)
    except ConfigError as exc:
        return _config_errors(exc)
    return doctor(config, sys.stdout)


def _setup_helper(args: argparse.Namespace) -> int:
    from securitylake_sink import setup_helpers  # noqa: PLC0415

    try:
        config = _load(args.config)
        if args.command == "iam-policy":
            setup_helpers.print_iam_policy(config, sys.stdout, sys.stderr, principal=args.principal, as_json=args.json)
        else:
            setup_helpers.print_sources(
                config,
                sys.stdout,
                sys.stderr,
                principal=args.principal,
                crawler_role_arn=args.crawler_role_arn,
                as_json=args.json,
            )
    except ConfigError as exc:
        return _config_errors(exc)
    return EXIT_OK


def _run(path: str, level: str | None, workers: int | None) -> int:
    from securitylake_sink.runner import run  # noqa: PLC0415
    from securitylake_sink.workers import orphan_config, orphan_spools  # noqa: PLC0415

    setup_logging(level or "info")
    try:
        config = _with_workers(_load(path), workers)
    except ConfigError as exc:
        return _config_errors(exc)
    setup_logging(level or config.logging.level, config.logging.format)
    try:
        if config.workers > 1:
            from securitylake_sink.supervisor import supervise  # noqa: PLC0415

            return supervise(config, config.workers, level=level or config.logging.level, fmt=config.logging.format)
        import pyarrow as pa  # noqa: PLC0415

        # The system allocator hands freed batch memory back; jemalloc kept ~25% more resident here.
        pa.set_memory_pool(pa.system_memory_pool())
        orphans = [orphan_config(config, p) for p in orphan_spools(config, 1)]
        return asyncio.run(run(config, orphans=orphans))
    except SinkError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILED


def _replay(args: argparse.Namespace) -> int:
    from securitylake_sink.sources.replay import run_replay  # noqa: PLC0415

    setup_logging(args.log_level)
    try:
        config = _load(args.config)
    except ConfigError as exc:
        return _config_errors(exc)
    return run_replay(
        config, args.tag, args.format, args.files, chunk_records=args.chunk_records, progress_secs=args.progress_secs
    )


def _map(args: argparse.Namespace) -> int:
    from securitylake_sink import mapcli  # noqa: PLC0415

    setup_logging("warning")
    if args.list:
        return mapcli.list_rules(sys.stdout, args.ocsf_version or "1.1.0")
    if args.config and not args.tag:
        print("error: --tag: required with -c (the mappings that apply depend on it)", file=sys.stderr)
        return EXIT_CONFIG
    return mapcli.run_map(
        rule=args.rule,
        config_path=args.config,
        tag=args.tag,
        source=args.file,
        as_msgpack=args.msgpack,
        version=args.ocsf_version,
    )


def main(argv: Sequence[str] | None = None) -> int:  # noqa: PLR0911 (one return per command)
    args = _parser().parse_args(argv)
    if args.command == "check-config":
        return _check_config(args.config, args.json, args.workers)
    if args.command == "run":
        return _run(args.config, args.log_level, args.workers)
    if args.command == "doctor":
        return _doctor(args.config)
    if args.command == "replay":
        return _replay(args)
    if args.command == "map":
        return _map(args)
    if args.command in ("iam-policy", "sources"):
        return _setup_helper(args)
    if args.command == "spool":
        return _spool(args)
    from securitylake_sink.demo import demo  # noqa: PLC0415

    setup_logging("warning")
    return demo(args.lake, args.records)
