"""How a model runs on a worker (`RunOptions`): one object from the command line to the run's config, the
scoring stage and the scorer, instead of the same keyword list in each. No torch here: the driver builds
and checks it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from dpiqa.errors import UsageError

DEVICES = ("auto", "cpu", "cuda")
PRECISION_NAMES = ("auto", "fp32", "bf16", "fp16")
RUNTIMES = ("auto", "torch", "onnx")


@dataclass(frozen=True)
class RunOptions:
    """How a model runs.

    Args:
        device: `auto` (the worker's GPU where it has one, decided on the worker), `cpu`, `cuda`, `cuda:1`, ...
        precision: `auto` (bf16 on a GPU, fp32 on a CPU), `fp32`, `bf16` (autocast) or `fp16`.
        channels_last: run convolutions in NHWC memory format (faster on GPUs with tensor cores).
        compile: wrap the model in `torch.compile`.
        runtime: `auto` (onnxruntime for an ONNX export from `dpiqa export`, else torch), `torch` or `onnx`
            (refuses a model that does not run on it).
        threads: torch threads of a CPU worker (None: what the worker has).
    """

    device: str = "auto"
    precision: str = "auto"
    channels_last: bool = False
    compile: bool = False
    runtime: str = "auto"
    threads: int | None = None

    def __post_init__(self) -> None:
        if self.precision not in PRECISION_NAMES:
            raise UsageError(f"precision must be one of {', '.join(PRECISION_NAMES)}, not {self.precision!r}")
        if self.runtime not in RUNTIMES:
            raise UsageError(f"runtime must be one of {', '.join(RUNTIMES)}, not {self.runtime!r}")
        if self.device.split(":")[0] not in DEVICES:
            raise UsageError(f"device must be auto, cpu, cuda or cuda:N, not {self.device!r}")

    def replace(self, **changes: object) -> RunOptions:
        return dataclasses.replace(self, **changes)
