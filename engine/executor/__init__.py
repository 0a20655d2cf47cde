"""Executors: where the units of a shard job run (this process, or Ray actors on a cluster), and the choice."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from dpiqa.engine.executor.base import Executor
    from dpiqa.engine.shards.listing import ShardList

log = logging.getLogger(__name__)

EXECUTORS = ("auto", "local", "ray")
# `auto` runs in this process when no cluster is named and the input is at most this big: a local Ray's start
# (Ray itself, worker processes, an actor loading the model) costs more than it saves on a small job.
SMALL_SHARDS = 64
SMALL_BYTES = 512 << 20


def named_cluster(address: str | None) -> str | None:
    """The Ray cluster the user named (`--address`, else `RAY_ADDRESS`), or None: a local Ray would be started."""
    return address or os.environ.get("RAY_ADDRESS")


def choose_executor(
    kind: str,
    address: str | None = None,
    shards: ShardList | None = None,
    storage_options: dict | None = None,
    label: str = "job",
) -> Executor:
    """The executor a job runs on: `local` (this process), `ray` (`address`, RAY_ADDRESS, or a local Ray), or
    `auto`: Ray when a cluster is named, this process for a small input (`SMALL_SHARDS`, `SMALL_BYTES`), a
    local Ray otherwise. The choice is logged with what decided it."""
    from dpiqa.engine.executor.local import LocalExecutor
    from dpiqa.engine.executor.ray_actors import RayExecutor

    if kind not in EXECUTORS:
        raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, not {kind!r}")
    if kind == "local":
        return LocalExecutor()
    if kind == "ray":
        return RayExecutor(address=address)
    named = named_cluster(address)
    if named:
        log.info("%s: on the Ray cluster at %s", label, named)
        return RayExecutor(address=address)
    if shards is not None and len(shards.urls) <= SMALL_SHARDS:
        from dpiqa.engine.shards.listing import sizes

        total = sum(s or 0 for s in sizes(shards.urls, storage_options).values())
        if total <= SMALL_BYTES:
            log.info(
                "%s: in this process (%d shards, %.0f MB, no cluster named; --executor ray to use a local Ray)",
                label,
                len(shards.urls),
                total / 2**20,
            )
            return LocalExecutor()
    log.info("%s: on a local Ray (no cluster named; --address or RAY_ADDRESS to use one)", label)
    return RayExecutor()
