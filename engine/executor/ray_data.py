"""An executor on Ray Data: a streaming `map_batches` chain, actor pools for stateful stages."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from engine.executor.base import Executor, Sink
from engine.stages.base import Batch, Stage

log = logging.getLogger(__name__)


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a dependency; this guards slim installs
        raise ImportError("pip install 'ray[data]' to use RayDataExecutor") from exc
    return ray


def quiet_worker_logs() -> None:
    """Run in every worker of a local Ray (`worker_process_setup_hook`). A local Ray without the dashboard
    has no state API, and Ray Train's placement-group cleaner then logs a warning every second for the
    whole run; on a real cluster the dashboard runs and the cleaner works. The worker's own cluster is made
    its `RAY_ADDRESS`: the cleaner looks the cluster up by address, and with two local Rays on one machine
    (two jobs side by side) the lookup otherwise fails with "Found multiple active Ray instances"."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
    os.environ.setdefault("RAY_ADDRESS", _ray().get_runtime_context().gcs_address)


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (`address`, else `RAY_ADDRESS`) or start a local Ray.

    A local Ray is the embedded default; it does not report usage statistics.
    """
    ray = _ray()
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        log.info("connecting to the Ray cluster at %s", address)
        ray.init(address=address, log_to_driver=True)
    else:
        # address="local": a new local Ray, never one that `ray start` left on this machine (ray.init without
        # an address joins that one, e.g. another user's test cluster, through /tmp/ray/ray_current_cluster)
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=True,
                 runtime_env={"worker_process_setup_hook": "engine.executor.ray_data.quiet_worker_logs"})
        log.info("started a local Ray with %s CPUs", ray.cluster_resources().get("CPU"))


class StageActor:
    """Ray Data needs a class to run an actor pool; this one holds a stage and sets it up once.

    Args:
        stage: the stage.
        progress: `(label, total rows)` to log progress lines as rows go through (meaningful for a pool of
            one actor, which sees every row), or None.
    """

    def __init__(self, stage: Stage, progress: tuple[str, int | None] | None = None) -> None:
        self.stage = stage
        stage.setup()
        self.rows = 0
        self.progress = None
        if progress is not None:
            from engine.progress import Progress, show_in_this_process

            show_in_this_process()
            self.progress = Progress(progress[0], progress[1], done_unit="images")

    def __call__(self, batch: Batch) -> Batch:
        out = self.stage(batch)
        if self.progress is not None:
            self.rows += len(next(iter(batch.values()))) if batch else 0
            self.progress.update(0, self.rows)
        return out


def actor_pool(ds, stage: Stage, size: int = 1, progress: tuple[str, int | None] | None = None):  # noqa: ANN001, ANN201
    """`ds.map_batches` through a pool of `size` actors each holding `stage` (set up once per actor), with
    the stage's batch size and resources: how the engine and the training jobs run a stateful stage."""
    ray = _ray()
    kwargs = {"num_gpus": stage.num_gpus} if stage.num_gpus else {}
    return ds.map_batches(StageActor, fn_constructor_args=(stage, progress), batch_size=stage.batch_size,
                          batch_format="numpy", num_cpus=stage.num_cpus,
                          compute=ray.data.ActorPoolStrategy(size=size), **kwargs)


class RayDataExecutor(Executor):
    """Runs the stages as one streaming Ray Data pipeline and feeds its output to the sink.

    Args:
        address: Ray cluster address; None uses `RAY_ADDRESS` or starts a local Ray.
        num_cpus: CPUs of a local Ray (default: all).
        prefetch_batches: output batches fetched ahead of the sink.
    """

    def __init__(self, address: str | None = None, num_cpus: int | None = None, prefetch_batches: int = 2) -> None:
        self.address, self.num_cpus, self.prefetch_batches = address, num_cpus, prefetch_batches

    def retryable(self, exc: BaseException) -> bool:
        """Ray system failures (a dead node, actor or worker, a lost object) are; errors in our own code,
        which Ray wraps as a task error with the user's exception as its cause, are not."""
        ray = _ray()
        if not isinstance(exc, ray.exceptions.RayError):
            return False
        if isinstance(exc, ray.exceptions.RayTaskError):
            cause = exc.cause if hasattr(exc, "cause") else None
            return isinstance(cause, ray.exceptions.RayError) and not isinstance(cause, ray.exceptions.RayTaskError)
        return True

    def run(self, items: list[dict], stages: Sequence[Stage], sink: Sink) -> None:
        if not items:
            return
        ray = _ray()
        init_ray(self.address, self.num_cpus)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the job reports shards and images/s itself
        ctx.print_on_execution_start = False
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        for stage in stages:
            kwargs = dict(batch_size=stage.batch_size, batch_format="numpy", num_cpus=stage.num_cpus)
            if stage.num_gpus:
                kwargs["num_gpus"] = stage.num_gpus
            if stage.runs_as_actor:
                size = stage.concurrency or 1
                pool = ray.data.ActorPoolStrategy(size=size) if isinstance(size, int) else ray.data.ActorPoolStrategy(
                    min_size=size[0], max_size=size[1])
                ds = ds.map_batches(StageActor, fn_constructor_args=(stage,), compute=pool, **kwargs)
            else:
                ds = ds.map_batches(stage, **kwargs)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=self.prefetch_batches):
            sink(batch)
