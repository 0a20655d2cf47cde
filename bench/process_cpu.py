"""Where a command's CPU time goes, by kind of process: the command itself, the processes it starts and those
Ray starts for it (which leave its process tree, so `time` does not count them).

    python bench/process_cpu.py --out bench/results/suite-cpu.md -- make test

Every process on the machine is sampled every `--interval` seconds (psutil); each one's CPU time (user +
system) at its last sample is counted under its kind: a Ray worker under the first task or actor it ran
(`ray::StageActor...`, not `ray::IDLE`), Ray's daemons by name, a Python process by its module or script.
Processes that live less than one interval are missed; the machine's busy time from /proc/stat over the same
wall time is exact, and the table says how much of it the sampled processes cover.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.common import publish

# Ray's daemons: the executable's name, or the Python script's (a script's path, not an argument: Ray's workers
# are passed the raylet's socket path among their arguments)
RAY_DAEMONS = {
    "raylet": "raylet",
    "gcs_server": "gcs_server",
    "agent.py": "dashboard agent",
    "main.py": "runtime_env agent",
    "log_monitor.py": "log_monitor",
    "monitor.py": "autoscaler monitor",
    "dashboard.py": "dashboard",
}
# Kinds a later sample may make more specific (a worker's title changes when it takes its first task)
PROVISIONAL = {"?", "ray::IDLE", "ray worker (starting)"}


def machine_busy() -> float:
    """Seconds of CPU the whole machine has spent busy (all cores), from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")


def kind_of(cmdline: list[str]) -> str:
    """A short name for what a process is."""
    if not cmdline:
        return "?"
    if cmdline[0].startswith("ray::"):
        title = cmdline[0].split()[0]
        return re.sub(r"\.(\w+)$", "", title)  # ray::ShardWriter.drain -> ray::ShardWriter
    exe = Path(cmdline[0]).name
    if exe in RAY_DAEMONS:
        return f"ray daemon: {RAY_DAEMONS[exe]}"
    line = " ".join(cmdline)
    if "exec(eval(sys.stdin" in line or "execnet" in line:
        return "pytest-xdist worker"
    if exe.startswith("python"):
        if "-m" in cmdline[1:]:
            return f"python -m {cmdline[cmdline.index('-m') + 1]}"
        if "-c" in cmdline[1:]:
            return "python -c"
        scripts = [a for a in cmdline[1:] if not a.startswith("-")]
        script = Path(scripts[0]).name if scripts else ""
        if script in ("default_worker.py", "setup_worker.py"):  # the second: a worker with a runtime environment
            return "ray worker (starting)"
        if "/ray/" in (scripts[0] if scripts else "") and script in RAY_DAEMONS:
            return f"ray daemon: {RAY_DAEMONS[script]}"
        return f"python {script}" if script else "python"
    return exe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interval", type=float, default=0.5)
    parser.add_argument("--out", help="also write the Markdown result here")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND ARGS...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command to measure after --")

    from dpiqa.version import machine

    before = {}  # pid -> CPU seconds already spent when the measurement began
    for p in psutil.process_iter(["cpu_times"]):
        if p.info["cpu_times"] is not None:
            before[p.pid] = p.info["cpu_times"].user + p.info["cpu_times"].system
    seen: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds since the start)
    busy0, t0 = machine_busy(), time.monotonic()
    proc = subprocess.Popen(command)
    while True:
        for p in psutil.process_iter(["cmdline", "cpu_times"]):
            try:
                times, cmdline = p.info["cpu_times"], p.info["cmdline"] or []
            except psutil.Error:
                continue
            if times is None:
                continue
            kind = kind_of(cmdline)
            previous = seen.get(p.pid)
            if previous is not None and (kind in PROVISIONAL or previous[0] not in PROVISIONAL):
                kind = previous[0]  # a worker keeps the first task or actor it ran
            seen[p.pid] = (kind, times.user + times.system - before.get(p.pid, 0.0))
        if proc.poll() is not None:
            break
        time.sleep(args.interval)
    wall, busy = time.monotonic() - t0, machine_busy() - busy0

    by_kind: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for pid, (kind, cpu) in seen.items():
        if pid == os.getpid() or cpu < 0.05:
            continue
        by_kind[kind][0] += 1
        by_kind[kind][1] += cpu
    counted = sum(cpu for _, cpu in by_kind.values())
    rows = sorted(by_kind.items(), key=lambda kv: -kv[1][1])
    lines = [
        "# CPU time by kind of process",
        "",
        f"Command: `{' '.join(command)}` (exit status {proc.returncode}).",
        f"Machine: {machine()}.",
        "",
        f"Wall time {wall:.0f} s; the machine was busy for {busy:.0f} CPU-seconds "
        f"({100 * busy / wall / (os.cpu_count() or 1):.0f}% of {os.cpu_count()} cores); the processes sampled "
        f"below account for {counted:.0f} s of it ({100 * counted / busy:.0f}%).",
        "",
        "| kind | processes | CPU s | share |",
        "| --- | ---: | ---: | ---: |",
    ]
    lines += [f"| {kind} | {n} | {cpu:.1f} | {100 * cpu / counted:.1f}% |" for kind, (n, cpu) in rows if cpu >= 0.5]
    small = [(n, cpu) for _, (n, cpu) in rows if cpu < 0.5]
    if small:
        lines.append(f"| (others under 0.5 s) | {sum(n for n, _ in small)} | {sum(c for _, c in small):.1f} | |")
    publish("\n".join(lines), args.out)
    sys.exit(proc.returncode)


if __name__ == "__main__":
    main()
