"""``securitylake-sink demo``: the sink on a temporary ``file://`` lake, fed a realistic mix of
records over the Forward protocol with acks, then a table of what landed and where."""

from __future__ import annotations

__all__ = ["demo"]

import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from securitylake_sink.app import App
from securitylake_sink.config import parse_config
from securitylake_sink.forward_client import ForwardClient

DEMO_CONFIG = """
destination:
  url: "file://{lake}"
  region: us-east-1
  account_id: "123456789012"
  sources:
    - {{class_uid: 3002, location: "ext/demo_auth/"}}
    - {{class_uid: 6003, location: "ext/demo_api/1.0/"}}
    - {{class_uid: 1007, location: "ext/demo_process/"}}
    - {{class_uid: 4002, location: "ext/demo_http/"}}
    - {{class_uid: "*", location: "ext/demo_other/"}}
listen:
  forward: {{address: "127.0.0.1:0"}}
spool: {{path: "{spool}"}}
mappings:
  - {{match: "host.sshd", rule: sshd}}
  - {{match: "web.nginx", rule: nginx_access}}
"""

SSHD = [
    "Accepted publickey for deploy from 10.0.4.17 port 52144 ssh2: ED25519 SHA256:Jd0x",
    "Failed password for invalid user admin from 203.0.113.9 port 40112 ssh2",
    "Failed password for root from 198.51.100.23 port 2211 ssh2",
    "Disconnected from authenticating user root 198.51.100.23 port 2211 [preauth]",
]
NGINX = [
    '203.0.113.7 - - [{t}] "GET /login HTTP/1.1" 200 512 "-" "Mozilla/5.0"',
    '198.51.100.4 - - [{t}] "POST /api/v1/token HTTP/1.1" 401 64 "-" "curl/8.5.0"',
]
USERS = ["alice", "bob", "deploy", "root", "svc-backup"]


def _ocsf_auth(rng: random.Random, t_ms: int) -> dict[str, Any]:
    ok = rng.random() < 0.8
    return {
        "class_uid": 3002,
        "activity_id": 1,
        "time": t_ms,
        "severity_id": 1 if ok else 3,
        "status_id": 1 if ok else 2,
        "user": {"name": rng.choice(USERS)},
        "src_endpoint": {
            "ip": f"10.0.{rng.randrange(256)}.{rng.randrange(1, 255)}",
            "port": rng.randrange(1024, 65535),
        },
        "dst_endpoint": {"hostname": "bastion-1"},
        "auth_protocol": "Password",
        "metadata": {"product": {"name": "bastion", "vendor_name": "example"}},
    }


def _ocsf_api(rng: random.Random, t_ms: int) -> dict[str, Any]:
    op = rng.choice(["GetObject", "PutObject", "AssumeRole", "DescribeInstances"])
    return {
        "class_uid": 6003,
        "activity_id": 2 if op.startswith(("Get", "Describe")) else 1,
        "time": t_ms,
        "severity_id": 1,
        "api": {"operation": op, "service": {"name": "s3.amazonaws.com"}},
        "actor": {"user": {"name": rng.choice(USERS), "type": "IAMUser"}},
        "src_endpoint": {"ip": f"192.0.2.{rng.randrange(1, 255)}"},
        "cloud": {"provider": "AWS", "region": "us-east-1"},
        "metadata": {"product": {"name": "CloudTrail", "vendor_name": "AWS"}},
    }


def _ocsf_process(rng: random.Random, t_ms: int) -> dict[str, Any]:
    cmd = rng.choice(["/usr/bin/curl http://example.com/x.sh", "/bin/ls -la /root", "/usr/sbin/sshd -D"])
    return {
        "class_uid": 1007,
        "activity_id": 1,
        "time": t_ms,
        "severity_id": 1,
        "process": {
            "pid": rng.randrange(100, 60000),
            "cmd_line": cmd,
            "file": {"path": cmd.split()[0], "name": cmd.split()[0].rsplit("/", 1)[1], "type_id": 1},
        },
        "actor": {"user": {"name": rng.choice(USERS)}},
        "device": {"hostname": "web-1", "type_id": 1},
    }


def make_records(count: int, seed: int = 7) -> list[tuple[str, int, dict[str, Any]]]:
    """(tag, time ns, record) over the last 36 hours: OCSF events and raw lines, mixed."""
    rng = random.Random(seed)
    now_ms = time.time_ns() // 1_000_000
    out = []
    for _ in range(count):
        t_ms = now_ms - rng.randrange(36 * 3_600_000)
        kind = rng.random()
        if kind < 0.3:
            out.append(("ocsf.auth", t_ms, _ocsf_auth(rng, t_ms)))
        elif kind < 0.5:
            out.append(("ocsf.cloudtrail", t_ms, _ocsf_api(rng, t_ms)))
        elif kind < 0.6:
            out.append(("ocsf.process", t_ms, _ocsf_process(rng, t_ms)))
        elif kind < 0.8:
            out.append(
                (
                    "host.sshd",
                    t_ms,
                    {"log": f"sshd[{rng.randrange(999, 99999)}]: {rng.choice(SSHD)}", "host": "bastion-1"},
                )
            )
        else:
            stamp = time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(t_ms / 1000))
            out.append(("web.nginx", t_ms, {"log": rng.choice(NGINX).format(t=stamp), "stream": "stdout"}))
    return [(tag, t * 1_000_000, rec) for tag, t, rec in out]


def _send(port: int, records: list[tuple[str, int, dict[str, Any]]], chunk: int = 250) -> list[int]:
    by_tag: dict[str, list[tuple[int, dict[str, Any]]]] = {}
    for tag, t_ns, rec in records:
        by_tag.setdefault(tag, []).append((t_ns, rec))
    with ForwardClient("127.0.0.1", port) as client:
        for tag, items in by_tag.items():
            for start in range(0, len(items), chunk):
                client.send(tag, items[start : start + chunk])
        return client.latencies_ns


def summarize(lake: Path) -> list[tuple[str, int, str, int, int]]:
    """(location, class_uid, eventDay, objects, rows) for every object in a local lake."""
    rows: Counter[tuple[str, int, str]] = Counter()
    objects: Counter[tuple[str, int, str]] = Counter()
    for path in sorted(lake.rglob("*.parquet")):
        rel = path.relative_to(lake).parts
        day = next(p.split("=", 1)[1] for p in rel if p.startswith("eventDay="))
        location = "/".join(rel[: next(i for i, p in enumerate(rel) if p.startswith("region="))]) + "/"
        table = pq.read_table(path, columns=["class_uid"])
        key = (location, int(table.column("class_uid")[0].as_py()), day)
        rows[key] += table.num_rows
        objects[key] += 1
    return [(loc, cls, day, objects[(loc, cls, day)], n) for (loc, cls, day), n in sorted(rows.items())]


def demo(lake_dir: str | None, count: int) -> int:
    base = Path(lake_dir) if lake_dir else Path(tempfile.mkdtemp(prefix="securitylake-sink-demo-"))
    lake, spool = (base / "lake").resolve(), (base / "spool").resolve()
    config = parse_config(DEMO_CONFIG.format(lake=lake, spool=spool))
    records = make_records(count)
    print(f"securitylake-sink demo: {count} records over the Forward protocol into file://{lake}")

    async def main() -> list[int]:
        app = App(config)
        await app.start()
        latencies = await asyncio.get_running_loop().run_in_executor(None, _send, app.forward.port, records)
        await app.shutdown()
        return latencies

    started = time.perf_counter()
    latencies = asyncio.run(main())
    elapsed = time.perf_counter() - started
    table = summarize(lake)
    print(f"\n{'location':24} {'class_uid':>9} {'eventDay':>9} {'objects':>8} {'rows':>7}")
    for location, cls, day, objects, rows in table:
        print(f"{location:24} {cls:>9} {day:>9} {objects:>8} {rows:>7}")
    total = sum(r[4] for r in table)
    ms = sorted(n / 1e6 for n in latencies)
    print(
        f"\n{total} of {count} records landed in {elapsed:.1f}s; "
        f"{len(ms)} chunks acked, ack latency p50 {statistics.median(ms):.1f} ms, "
        f"p99 {ms[int(len(ms) * 0.99) - 1 if len(ms) > 1 else 0]:.1f} ms"
    )
    print(f"lake:  {lake}")
    query = f"SELECT class_name, count(*) FROM read_parquet('{lake}/**/*.parquet', hive_partitioning=1) GROUP BY ALL"  # noqa: S608 (printed for the user)
    print(f'query: duckdb -c "{query}"')
    return 0 if total == count else 1
