"""An executor on a Ray cluster: one actor per worker slot, each doing whole units (shards), replaced when lost.

Why actors driven by the runner and not a Ray Data pipeline: a shard must be read, scored and written in one
place for its Parquet and marker to be written by the process that holds all of its rows, and a lost node
must cost only the shards in flight there. Ray Data's pipelines fail as a whole when an actor they cannot
restart is lost, and bring every block back to the driver; here the driver submits one call per shard and
receives one small result per shard (img2dataset's Ray distributor works the same way), retries a unit
alone with a limit it counts, and replaces a worker that died or stopped making progress.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from dpiqa.engine.executor.base import Executor, UnitWorker, WorkerLost, WorkerPool, WorkerSetupError
from dpiqa.engine.executor.ray_data import init_ray, quiet_ray_logs
from dpiqa.models.allocator import ONE_ARENA_ENV

log = logging.getLogger(__name__)

PROGRESS_TIMEOUT = 5.0  # seconds a worker has to answer a progress poll (its spare thread answers it)


class RayExecutor(Executor):
    """Runs units on Ray actors.

    Args:
        address: Ray cluster address; None uses `RAY_ADDRESS` or starts a local Ray.
        num_cpus: CPUs of a local Ray (default: all).
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None) -> None:
        self.address, self.num_cpus = address, num_cpus
        self.started_seconds = 0.0

    def connect(self) -> float:
        """Start or reach Ray; returns the seconds it took (0 when it was running)."""
        seconds = init_ray(self.address, self.num_cpus)
        self.started_seconds += seconds
        return seconds

    def default_slots(self, worker: UnitWorker) -> int:
        import ray

        self.connect()
        if worker.num_gpus:
            return max(1, int(ray.cluster_resources().get("GPU", 0) // worker.num_gpus))
        return 1

    def pool(self, worker: UnitWorker, slots: int, depth: int = 2) -> WorkerPool:
        self.connect()
        return RayPool(worker, self._placeable(worker, slots), depth)

    def _placeable(self, worker: UnitWorker, slots: int) -> int:
        """`slots`, or what a local Ray can place: a local Ray never grows, and actors it cannot place would
        wait for ever in silence. A named cluster may grow (an autoscaler), so its shortfall is only said."""
        import os

        import ray

        total = ray.cluster_resources()
        fits = []
        for res, each in (("CPU", worker.num_cpus), ("GPU", worker.num_gpus)):
            if each:
                fits.append(int(total.get(res, 0) // each + 1e-9))
        can = min(fits) if fits else slots
        if can >= slots:
            return slots
        need = ", ".join(
            f"{each:g} {res}" for res, each in (("CPU", worker.num_cpus), ("GPU", worker.num_gpus)) if each
        )
        have = ", ".join(f"{total.get(r, 0):g} {r}" for r in ("CPU", "GPU"))
        if self.address or os.environ.get("RAY_ADDRESS"):
            log.warning(
                "%s: %d workers of %s each do not fit the cluster now (%s): %d can start; the rest wait until "
                "nodes join (an autoscaler's)",
                worker.label,
                slots,
                need,
                have,
                can,
            )
            return slots
        if can < 1:
            raise ValueError(
                f"{worker.label}: one worker needs {need}, and this machine's Ray has {have}; "
                "run on a cluster (--address) or give the worker less"
            )
        log.warning(
            "%s: %d workers of %s each do not fit this machine's Ray (%s); starting %d",
            worker.label,
            slots,
            need,
            have,
            can,
        )
        return can


class _UnitActor:
    """The actor around a `UnitWorker`: set up once, then `run` per unit (several at once) and `progress`."""

    def __init__(self, worker: UnitWorker) -> None:
        quiet_ray_logs()
        self.worker = worker
        worker.setup()

    def run(self, unit: dict) -> dict:
        return self.worker(unit)

    def ready(self) -> bool:
        return True

    def progress(self) -> tuple[int, int, float]:
        return self.worker.progress()


class RayPool(WorkerPool):
    """`slots` actors of `_UnitActor`, each with `depth` + 1 threads (the extra one answers progress polls)."""

    restartable = True

    def __init__(self, worker: UnitWorker, slots: int, depth: int) -> None:
        import ray

        self.worker, self.slots, self.depth = worker, slots, max(1, depth)
        options: dict[str, Any] = {
            "num_cpus": worker.num_cpus,
            "max_concurrency": self.depth + 1,
            # Ray does not restart a lost worker or retry its calls: the runner replaces it and runs its units
            # again, counting each, within the run's limit (a unit that kills every worker it meets ends).
            "max_restarts": 0,
            "max_task_retries": 0,
            # The worker's units and its model run on the actor's threads: one malloc arena for them all, set
            # before the worker process's first allocation (dpiqa/models/allocator.py: one_arena).
            "runtime_env": {"env_vars": dict(ONE_ARENA_ENV)},
        }
        if worker.num_gpus:
            options["num_gpus"] = worker.num_gpus
        self._actor = ray.remote(_UnitActor).options(**options)
        self._worker_ref = ray.put(worker)  # one copy in the object store, not one per actor start
        self.actors = [self._actor.remote(self._worker_ref) for _ in range(slots)]
        self._generations = [0] * slots
        self._ready_refs: dict[int, Any] = {slot: a.ready.remote() for slot, a in enumerate(self.actors)}

    def ready(self, slot: int) -> bool:
        import ray

        ref = self._ready_refs.get(slot)
        if ref is None:
            return True
        done, _ = ray.wait([ref], timeout=0)
        if not done:
            return False
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            # The constructor raised (the setup's own error is in the message), or the worker's node died while
            # it started: the first stops the run, the second only this worker, which starts again.
            text = str(exc)
            if "__init__" in text or "constructor" in text or "creation task" in text:
                raise WorkerSetupError(
                    f"{self.worker.label}: its workers could not start: {_last_error_line(text)}"
                ) from None
            self.restart(slot)
            return False
        del self._ready_refs[slot]
        return True

    def submit(self, slot: int, unit: dict) -> Any:
        return self.actors[slot].run.remote(unit)

    def generation(self, slot: int) -> int:
        return self._generations[slot]

    def wait(self, tickets: Sequence[Any], timeout: float) -> list:
        import ray

        if not tickets:
            return []
        ready, _ = ray.wait(list(tickets), num_returns=1, timeout=timeout)
        if not ready:
            return []
        ready, _ = ray.wait(list(tickets), num_returns=len(tickets), timeout=0)
        return ready

    def result(self, ticket: Any) -> dict:
        import ray

        try:
            return ray.get(ticket, timeout=60)
        except (
            ray.exceptions.RayActorError,
            ray.exceptions.WorkerCrashedError,
            ray.exceptions.NodeDiedError,
            ray.exceptions.ObjectLostError,
            ray.exceptions.OwnerDiedError,
        ) as exc:
            raise WorkerLost(f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, Exception):
                raise cause from None
            raise

    def progress(self) -> list[tuple[int, int, float] | None]:
        import ray

        refs = [a.progress.remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=PROGRESS_TIMEOUT)
        ready_set = set(ready)
        out: list[tuple[int, int, float] | None] = []
        for ref in refs:
            if ref not in ready_set:
                out.append(None)
                continue
            try:
                out.append(tuple(ray.get(ref)))
            except Exception:  # a dead or starting worker: no progress to report
                out.append(None)
        return out

    def restart(self, slot: int) -> None:
        import ray

        try:
            ray.kill(self.actors[slot], no_restart=True)
        except Exception:  # already gone
            pass
        self.actors[slot] = self._actor.remote(self._worker_ref)
        self._ready_refs[slot] = self.actors[slot].ready.remote()
        self._generations[slot] += 1

    def close(self) -> None:
        import ray

        for actor in self.actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        self.actors = []


def _last_error_line(text: str) -> str:
    """The exception line of a Ray error's text (its remote traceback's last `Name: message` line)."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ":" in ln and not ln.startswith(("File ", "^", "~")):
            return ln[:300]
    return lines[-1][:300] if lines else text[:300]
