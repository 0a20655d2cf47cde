"""Ray itself for every job (`init_ray`, quiet logs, which failures are Ray's) and Ray Data's actor pools for
the training jobs' datasets (`actor_pool`). Scoring, filtering and the audit scan run on `RayExecutor`."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dpiqa.engine.stages.base import Batch, Stage

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency; this guards slim installs
        raise ImportError("pip install 'ray[data]' to use Ray") from exc
    return ray


def quiet_worker_logs() -> None:
    """Run in every worker of a local Ray (`worker_process_setup_hook`). A local Ray without the dashboard
    has no state API, and Ray Train's placement-group cleaner then logs a warning every second for the
    whole run; on a real cluster the dashboard runs and the cleaner works. The worker's own cluster is made
    its `RAY_ADDRESS`: the cleaner looks the cluster up by address, and with two local Rays on one machine
    (two jobs side by side) the lookup otherwise fails with "Found multiple active Ray instances"."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    quiet_ray_logs()  # Ray Data's INFO lines in the workers too (a dataset's "execution finished" per epoch)
    os.environ.setdefault("RAY_ADDRESS", _ray().get_runtime_context().gcs_address)


# Ray's own lines that a normal run need not show: Ray Data's per-dataset INFO lines and its note that the
# progress bars are off (the jobs print their own progress lines). Warnings and errors still show.
# Actor pools are not restarted by Ray: a restartable actor whose constructor arguments sit in the object
# store (Ray Data always puts them there) makes Ray log an ERROR on every run (ray-project/ray#57733). A
# lost actor fails the attempt instead, and the job's next attempt redoes the shards without a marker.
NO_RESTARTS = {"max_restarts": 0}


def _map_with_actors(ds, **kwargs: Any):
    """`ds.map_batches(StageActor, ..., max_restarts=0)`. Ray 2.60 has no named parameter for `max_restarts`
    and warns (RayDeprecationWarning) on every run about the `**ray_remote_args` that still carry it; that
    one warning is not the user's to act on, so it is filtered here and nowhere else."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`ray_remote_args` is deprecated")
        return ds.map_batches(StageActor, **kwargs, **NO_RESTARTS)


QUIET_LOGGERS = {
    "ray.data": logging.WARNING,
    "ray.data._internal.progress": logging.ERROR,
    "ray._private.worker": logging.WARNING,  # "Started a local Ray instance": init_ray says so
    # "token authentication is enabled": it is, with the token made in `init_ray`
    "ray._private.authentication.authentication_token_setup": logging.ERROR,
}


def quiet_ray_logs() -> None:
    """Apply `QUIET_LOGGERS`, after Ray Data has configured its loggers (on its first import, which resets
    their levels: hence the import here, else a job that imports it later logs its INFO lines)."""
    import ray.data  # noqa: F401 - configures Ray Data's loggers now, not after ours

    for name, level in QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)


def configure_data_context():
    """The current Ray Data context, set as the jobs run their datasets: no progress bars and no plan printed
    at the start (the jobs print their own progress lines)."""
    ctx = _ray().data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    return ctx


def init_ray(address: str | None = None, num_cpus: int | None = None, for_training: bool = False) -> float:
    """Connect to a cluster (`address`, else `RAY_ADDRESS`) or start a local Ray; returns the seconds it took
    (0 when Ray was already running).

    With `for_training`, a local Ray's workers run `quiet_worker_logs` first (what Ray Train's controller
    needs on a local Ray); scoring does without that hook, which costs seconds of start-up (a runtime
    environment for every worker).

    A local Ray is the embedded default: it reports no usage statistics, and it keeps Ray's token
    authentication with a token made for this process (in its environment, which Ray's workers inherit)
    instead of one written to the user's home, unless the user set RAY_AUTH_MODE or a token themselves.
    """
    ray = _ray()
    if ray.is_initialized():
        return 0.0
    t0 = time.monotonic()
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    quiet_ray_logs()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        if (
            not {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
            and not (Path.home() / ".ray" / "auth_token").exists()
        ):
            os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
        # Ray Train's spot-preemption watcher (an actor per run) and its metrics export (read by a dashboard this
        # Ray does not start) serve clusters; on one machine they only add seconds to every training run's start.
        # Propagated by Ray Train from this process to its controller and workers; a user's setting wins.
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
        handler = signal.getsignal(signal.SIGTERM)
        hook = {"worker_process_setup_hook": "dpiqa.engine.executor.ray_data.quiet_worker_logs"} if for_training else {}
        # address="local": a new local Ray, never one that `ray start` left on this machine (ray.init without
        # an address joins that one, e.g. another user's test cluster, through /tmp/ray/ray_current_cluster)
        ray.init(
            address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, runtime_env=hook or None
        )
        if threading.current_thread() is threading.main_thread() and callable(handler):
            signal.signal(signal.SIGTERM, handler)  # ray.init sets its own (sys.exit); keep the caller's
        log.info("started a local Ray with %s CPUs in %.1fs", ray.cluster_resources().get("CPU"), time.monotonic() - t0)
    return time.monotonic() - t0


def is_ray_system_error(exc: BaseException) -> bool:
    """Whether a failure is Ray's (a dead node, actor or worker, a lost object), worth a fresh attempt over
    the unfinished work; errors in our own code, which Ray wraps as a task error with the user's exception
    as its cause (Ray Data: with a `UserCodeException`, itself a `RayError`, as the cause), are not."""
    ray = _ray()
    if not isinstance(exc, ray.exceptions.RayError) or isinstance(exc, ray.exceptions.UserCodeException):
        return False
    if isinstance(exc, ray.exceptions.RayTaskError):
        cause = exc.cause if hasattr(exc, "cause") else None
        return isinstance(cause, ray.exceptions.RayError) and not isinstance(cause, ray.exceptions.RayTaskError)
    return True


class StageActor:
    """Ray Data needs a class to run an actor pool; this one holds a stage and sets it up once.

    Args:
        stage: the stage.
        progress: `(label, total rows)` to log progress lines as rows go through (meaningful for a pool of
            one actor, which sees every row), or None.
        then: stages run on the actor's output in the same call (`Stage.beside_actor`: the writer's hand-off,
            which would otherwise be one more Ray task per block).
    """

    def __init__(
        self, stage: Stage, progress: tuple[str, int | None] | None = None, then: Sequence[Stage] = ()
    ) -> None:
        self.stage, self.then = stage, list(then)
        stage.setup()
        self.rows = 0
        self.progress = None
        if progress is not None:
            from dpiqa.engine.progress import Progress, show_in_this_process

            show_in_this_process()
            self.progress = Progress(progress[0], progress[1], done_unit="images")

    def __call__(self, batch: Batch) -> Batch:
        out = self.stage(batch)
        for stage in self.then:
            out = stage(out)
        if self.progress is not None:
            self.rows += len(next(iter(batch.values()))) if batch else 0
            self.progress.update(0, self.rows)
        return out


def actor_pool(ds, stage: Stage, size: int = 1, progress: tuple[str, int | None] | None = None):
    """`ds.map_batches` through a pool of `size` actors each holding `stage` (set up once per actor), with
    the stage's batch size and resources: how the engine and the training jobs run a stateful stage."""
    ray = _ray()
    kwargs = {"num_gpus": stage.num_gpus} if stage.num_gpus else {}
    return _map_with_actors(
        ds,
        fn_constructor_args=(stage, progress),
        batch_size=stage.batch_size,
        batch_format="numpy",
        num_cpus=stage.num_cpus,
        compute=ray.data.ActorPoolStrategy(size=size),
        **kwargs,
    )
