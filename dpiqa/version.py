"""What made a result: the code version (written into checkpoints, manifests and Parquet metadata) and the
machine (written into model cards and benchmark reports)."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path


@functools.cache
def code_version() -> str:
    """`<package version>+g<commit>[.dirty]` inside a git checkout, the package version otherwise."""
    try:
        version = metadata.version("dpiqa")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    root = Path(__file__).resolve().parent.parent
    if not (root / ".git").exists():
        return version
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short=10", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return version
    if not commit:
        return version
    return f"{version}+g{commit}" + (".dirty" if dirty else "")


def machine() -> str:
    """CPU model, cores, RAM, OS, Python and the versions that matter, plus the GPU if one is visible."""
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    parts = [
        f"{cpu}, {os.cpu_count()} cores, {ram:.1f} GiB RAM",
        platform.platform(),
        f"Python {platform.python_version()}",
    ]
    versions = []
    for name in ("torch", "ray", "pyarrow", "onnxruntime"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            pass
    parts.append(", ".join(versions))
    try:
        import torch

        if torch.cuda.is_available():
            parts.append(f"GPU {torch.cuda.get_device_name(0)}")
    except ImportError:
        pass
    return "; ".join(parts)
