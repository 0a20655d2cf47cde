"""Benchmark: planning and resume of a run over many shards (listing the input, deciding which shards are
done, the first unit ready to schedule), and the driver's peak memory, against the number of shards.

For each size N: N empty shard files (names are all planning reads) and markers on half of them, recorded in
bulk as a finished run records them (`OutputLocation.record_markers`); then, in a fresh process each, the
driver's planning as `dpiqa score` does it: `list_shards` (the input), `runner.pending_shards` (one
listing of `_done/`, the runs' records), and the first unit of the rest. On a local folder and on the loopback
S3 server (moto; objects put in bulk). Prints seconds per step, the driver's peak RSS, the slope per 10^5
shards, the projection to 10^6 where not measured, and the machine.

    python bench/plan.py [--local 10000,100000,1000000] [--s3 10000,100000] [--out bench/results/plan-cpu.md]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

CHILD = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from dpiqa.engine.shards.listing import list_shards
from dpiqa.engine.output import OutputLocation
from dpiqa.engine.runner import pending_shards
spec, out, options = sys.argv[2], sys.argv[3], json.loads(sys.argv[4]) or None
t0, c0 = time.monotonic(), time.process_time()
shards = list_shards(spec, options)
t1 = time.monotonic()
todo, skipped = pending_shards(OutputLocation(out, options), shards)
t2 = time.monotonic()
first = next(iter(todo), None)
unit = {"url": first, "name": shards.names[first]} if first else None
t3 = time.monotonic()
# VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its parent's size
hwm = next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({"shards": len(shards.urls), "todo": len(todo), "skipped": skipped, "list": t1 - t0,
                  "skip_done": t2 - t1, "first_unit": t3 - t2, "total": t3 - t0, "driver_cpu": time.process_time() - c0,
                  "peak_rss_mib": hwm / 1024}))
"""


def plan(spec: str, out: str, options: dict | None) -> dict:
    """Plan in a fresh process; adds `server_cpu`: this process's CPU seconds meanwhile (where the loopback S3
    server runs on its threads, that is the server's work; ~0 for a local folder)."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    before = resource.getrusage(resource.RUSAGE_SELF)
    r = subprocess.run(
        [sys.executable, "-c", CHILD, str(REPO), spec, out, json.dumps(options)],
        env=env,
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise RuntimeError(r.stderr[-3000:])
    after = resource.getrusage(resource.RUSAGE_SELF)
    server = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {**json.loads(r.stdout.strip().splitlines()[-1]), "server_cpu": server}


def markers_for(names: list[str], url_of) -> list[tuple[str, dict]]:
    return [(n, {"shard": url_of(n), "rows": 1, "config_hash": "bench"}) for n in names[::2]]


def build_local(root: Path, n: int) -> tuple[str, str]:
    from dpiqa.engine.output import DONE_DIR, OutputLocation

    shards, out = root / f"in-{n}", root / f"out-{n}"
    shards.mkdir(parents=True)
    names = [f"{i:07d}" for i in range(n)]
    for name in names:
        (shards / f"{name}.tar").touch()
    loc = OutputLocation(str(out))
    loc.claim({"model": "bench"})
    done = markers_for(names, lambda name: str(shards / f"{name}.tar"))
    (out / DONE_DIR).mkdir(parents=True, exist_ok=True)
    for name, marker in done:
        (out / DONE_DIR / f"{name}.json").write_text(json.dumps(marker))
    loc.record_markers("20261207T000000Z-bench", 0, done)
    return str(shards), str(out)


def build_s3(endpoint: str, bucket: str, n: int) -> tuple[str, str, dict]:
    from dpiqa.engine.output import OutputLocation

    options = {"client_kwargs": {"endpoint_url": endpoint}, "key": "testing", "secret": "testing"}
    names = [f"{i:07d}" for i in range(n)]
    done = markers_for(names, lambda name: f"s3://{bucket}/in-{n}/{name}.tar")

    # The objects go straight into the in-process server's store (moto's backend, the one its HTTP API serves):
    # through HTTP, moto took ~400 s for 45,000 objects; the planning measured below goes through HTTP as a run's.
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]

    def put(item: tuple[str, bytes]) -> None:
        backend.put_object(bucket, item[0], item[1])

    loc = OutputLocation(f"s3://{bucket}/out-{n}", options)
    loc.claim({"model": "bench"})
    items = [(f"in-{n}/{name}.tar", b"") for name in names]
    items += [(f"out-{n}/_done/{name}.json", json.dumps(m).encode()) for name, m in done]
    for item in items:
        put(item)
    loc.record_markers("20261207T000000Z-bench", 0, done)
    return f"s3://{bucket}/in-{n}/", f"s3://{bucket}/out-{n}", options


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--local", default="10000,100000,1000000", help="shard counts on a local folder")
    ap.add_argument("--s3", default="10000,100000", help="shard counts on the loopback S3 server ('' to skip)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here too")
    args = ap.parse_args()
    os.environ.setdefault("AWS_EC2_METADATA_DISABLED", "true")

    from dpiqa.version import machine

    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="dpiqa-plan-"))
    try:
        for n in [int(x) for x in args.local.split(",") if x]:
            t = time.monotonic()
            spec, out = build_local(tmp, n)
            print(f"local {n:,}: built in {time.monotonic() - t:.0f} s", flush=True)
            rows.append(("local folder", plan(spec, out, None)))
            print(rows[-1], flush=True)
            shutil.rmtree(tmp / f"in-{n}")
            shutil.rmtree(tmp / f"out-{n}")
        if args.s3:
            import boto3
            from moto.server import ThreadedMotoServer

            sys.path.insert(0, str(REPO / "tests"))
            from conftest import free_port  # the suite's port helper

            port = free_port()
            logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto logs every request otherwise
            server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
            server.start()
            endpoint = f"http://127.0.0.1:{port}"
            boto3.client(
                "s3",
                endpoint_url=endpoint,
                region_name="us-east-1",
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
            ).create_bucket(Bucket="bench")
            try:
                for n in [int(x) for x in args.s3.split(",") if x]:
                    t = time.monotonic()
                    spec, out, options = build_s3(endpoint, "bench", n)
                    print(f"s3 {n:,}: built in {time.monotonic() - t:.0f} s", flush=True)
                    rows.append(("loopback S3 (moto)", plan(spec, out, options)))
                    print(rows[-1], flush=True)
            finally:
                server.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    lines = [
        f"`python bench/plan.py --local {args.local} --s3 {args.s3}`: planning of `dpiqa score` over N shards with "
        "markers on half (recorded in bulk, as a finished run records them), each in a fresh process.",
        "",
        "| store | shards | list input s | skip done s | first unit s | planning total s | driver CPU s | "
        "server CPU s | driver peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for store, r in rows:
        lines.append(
            f"| {store} | {r['shards']:,} | {r['list']:.2f} | {r['skip_done']:.2f} | {r['first_unit']:.4f} | "
            f"{r['total']:.2f} | {r['driver_cpu']:.2f} | {r['server_cpu']:.2f} | {r['peak_rss_mib']:.0f} |"
        )
    lines.append("")
    for store in dict.fromkeys(s for s, _ in rows):
        mine = [r for s, r in rows if s == store]
        if len(mine) >= 2:
            a, b = mine[-2], mine[-1]
            per = (b["total"] - a["total"]) / (b["shards"] - a["shards"])
            mem = (b["peak_rss_mib"] - a["peak_rss_mib"]) / (b["shards"] - a["shards"])
            at = 1_000_000
            lines.append(
                f"{store}: {per * 1e5:.2f} s and {mem * 1e5:.0f} MiB per 10^5 more shards (between "
                f"{a['shards']:,} and {b['shards']:,}); at 10^6 shards: planning "
                f"{'measured ' + format(b['total'], '.0f') + ' s' if b['shards'] >= at else 'projected ' + format(b['total'] + per * (at - b['shards']), '.0f') + ' s'}, "
                f"driver peak RSS {'measured ' + format(b['peak_rss_mib'], '.0f') if b['shards'] >= at else 'projected ' + format(b['peak_rss_mib'] + mem * (at - b['shards']), '.0f')} MiB."
            )
            cpu = (b["driver_cpu"] - a["driver_cpu"]) / (b["shards"] - a["shards"])
            # The planning process's own CPU: against a store that answers as fast as S3 does (many ranges in
            # flight), what is left of planning; on moto, whose server time grows with the bucket, wall time is not.
            lines.append(
                f"{store}: driver CPU {cpu * 1e3:.3f} ms per more shard; at 10^6 shards "
                f"{'measured ' + format(b['driver_cpu'], '.0f') if b['shards'] >= at else 'projected ' + format(b['driver_cpu'] + cpu * (at - b['shards']), '.0f')} s."
            )
    lines += ["", f"Machine: {machine()}"]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
