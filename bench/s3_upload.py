"""Upload throughput of S3Store against a local moto server: objects/s and MB/s per object size,
through the same code path the sink's deliver thread uses (one put at a time, CRC32 checksums).

    .venv/bin/python bench/s3_upload.py [--seconds 5] [--sizes-kib 64,1024,8192] [--multipart-mib 64]

Uses the moto server on 127.0.0.1:$MOTO_PORT when one listens, else starts one for the run.
Figures against moto measure the client side and loopback HTTP, not AWS.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import boto3

from securitylake_sink.lake.s3 import MIN_PART_BYTES, S3Store
from securitylake_sink.lake.url import parse_destination

KEY = "ext/bench/region=us-east-1/accountId=123456789012/eventDay=20260101/{}.parquet"


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


@contextlib.contextmanager
def moto_endpoint() -> Iterator[str]:
    port = int(os.environ.get("MOTO_PORT", "5055"))
    if _listening(port):
        yield f"http://127.0.0.1:{port}"
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    moto = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen(
        [str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 30
        while not _listening(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit("moto_server did not start")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def run(store: S3Store, size: int, seconds: float) -> tuple[int, float]:
    """Put objects of ``size`` bytes for about ``seconds``; (objects, elapsed seconds). The objects
    are deleted afterwards so that moto's memory stays small."""
    data = os.urandom(size)
    keys: list[str] = []
    started = time.perf_counter()
    while time.perf_counter() - started < seconds or not keys:
        keys.append(KEY.format(uuid.uuid4()))
        store.put(keys[-1], data)
    elapsed = time.perf_counter() - started
    for start in range(0, len(keys), 1000):
        batch = [{"Key": key} for key in keys[start : start + 1000]]
        store.client.delete_objects(Bucket=store.bucket, Delete={"Objects": batch})  # type: ignore[typeddict-item]
    return len(keys), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="time per object size")
    parser.add_argument("--sizes-kib", default="64,1024,8192,65536", help="single-PutObject sizes, KiB")
    parser.add_argument("--multipart-mib", type=int, default=64, help="one multipart size (0: skip), MiB")
    args = parser.parse_args()
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
    with moto_endpoint() as endpoint:
        bucket = f"bench-{uuid.uuid4().hex[:10]}"
        session = boto3.Session(region_name="us-east-1")
        session.client("s3", endpoint_url=endpoint).create_bucket(Bucket=bucket)
        destination = parse_destination(f"s3://{bucket}/", region="us-east-1", endpoint=endpoint)

        def make(region: str) -> object:
            return session.client("s3", region_name=region, endpoint_url=endpoint)

        cases = [(int(k) * 1024, "PutObject") for k in args.sizes_kib.split(",") if k]
        if args.multipart_mib:
            cases.append((args.multipart_mib * 1024 * 1024, "multipart"))
        print(f"S3Store -> moto at {endpoint}, {args.seconds:.0f}s per size, one put at a time")
        print(f"{'size':>10} {'how':>10} {'objects':>8} {'objects/s':>10} {'MB/s':>8}")
        for size, how in cases:
            threshold = size - 1 if how == "multipart" else size
            store = S3Store(destination, make, multipart_threshold=threshold, part_bytes=max(MIN_PART_BYTES, size // 4))  # type: ignore[arg-type]
            count, elapsed = run(store, size, args.seconds)
            shown = f"{size // 1024} KiB" if size < 1024 * 1024 else f"{size // (1024 * 1024)} MiB"
            print(f"{shown:>10} {how:>10} {count:>8} {count / elapsed:>10.1f} {count * size / elapsed / 1e6:>8.1f}")


if __name__ == "__main__":
    main()
