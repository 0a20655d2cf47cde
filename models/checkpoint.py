"""Our checkpoint format: a directory with `config.json`, `model.safetensors` and `card.json`.

An ONNX export of a student (`models/export.py`) is the same directory with `model.onnx` in place of
`model.safetensors` and `"format": "onnx"` in its card.

The directory may be local, any fsspec URL (`s3://...`) or a Hugging Face Hub repo id. No pickle is
read or written. A content hash (sha256 over `config.json` and `model.safetensors`) identifies a
checkpoint; it is stored in the card when saving and checked when loading.

We write this small layer instead of using diffusers' `ModelMixin` or huggingface_hub's
`PyTorchModelHubMixin` because neither reads or writes fsspec URLs or carries a card with a content
hash; the weights themselves go through `safetensors.torch` as in both.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
import typing
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import fsspec

from dpiqa import storage
from dpiqa.version import code_version

if TYPE_CHECKING:  # torch and safetensors.torch are imported where weights are read or written
    import torch
    from torch import nn

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
ONNX_NAME = "model.onnx"
ONNX_FILES = (CONFIG_NAME, ONNX_NAME, CARD_NAME)

C = TypeVar("C")
M = TypeVar("M", bound="CheckpointMixin")


def cache_dir() -> Path:
    return Path(os.environ.get("DPIQA_CACHE", Path.home() / ".cache" / "dpiqa"))


def config_to_dict(config: Any) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(config)))


def config_from_dict(cls: type[C], data: dict) -> C:
    """Build a config dataclass from JSON, turning lists back into tuples where the field is a tuple.
    Unknown keys are an error, so a checkpoint from a newer version fails loudly, not silently."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(data) - set(fields) - {"architecture"}
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {sorted(unknown)} (checkpoint from a newer version?)")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        if isinstance(value, list) and "tuple" in str(hints.get(name, "")):
            value = tuple(tuple(v) if isinstance(v, list) else v for v in value)
        kwargs[name] = value
    return cls(**kwargs)


def is_url(location: str) -> bool:
    return "://" in location and not location.startswith("file://")


def is_hub_id(location: str) -> bool:
    return not is_url(location) and not os.path.exists(location) and location.count("/") == 1


def local_dir(location: str, files: tuple[str, ...] = FILES) -> Path:
    """A local directory holding the checkpoint's files: the folder itself, or a cached download of an
    fsspec URL or a Hub repo (re-fetched when the remote size changes)."""
    if os.path.isdir(location):
        return Path(location)
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(location)
        target = cache_dir() / "checkpoints" / hashlib.sha256(location.encode()).hexdigest()[:16]
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            remote = storage.fs_join(path, name)
            if not fs.exists(remote):
                if name == CARD_NAME:
                    continue
                raise FileNotFoundError(f"{location}: checkpoint has no {name}")
            local = target / name
            if not local.exists() or local.stat().st_size != fs.size(remote):
                fs.get(remote, str(local))
        return target
    if is_hub_id(location):
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id=location, allow_patterns=list(files)))
    raise FileNotFoundError(f"{location}: no such checkpoint directory, URL or Hub repo")


def mirror(url: str, include: Callable[[str], bool], storage_options: dict | None = None) -> Path:
    """Copy the files of a remote folder that `include(relative_path)` accepts into the local cache,
    keeping the layout, so libraries that read only local folders (diffusers, transformers) can load
    it. Files already there with the remote size are not fetched again.

    Args:
        url: an fsspec folder URL (`s3://bucket/sd-v1-5`).
        include: which files to copy, by path relative to `url` (`unet/config.json`).
        storage_options: fsspec options (endpoint, credentials).
    """
    fs, root = fsspec.core.url_to_fs(url, **(storage_options or {}))
    root = root.rstrip("/")
    if not fs.isdir(root):
        raise FileNotFoundError(f"{url}: no such folder")
    target = cache_dir() / "mirrors" / hashlib.sha256(url.encode()).hexdigest()[:16]
    wanted = {
        path: path[len(root) + 1 :]
        for path, info in fs.find(root, detail=True).items()
        if info.get("type") == "file" and include(path[len(root) + 1 :])
    }
    if not wanted:
        raise FileNotFoundError(f"{url}: none of the expected files are there")
    for remote, relative in sorted(wanted.items()):
        local = target / relative
        if local.exists() and local.stat().st_size == fs.size(remote):
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        log.info("fetching %s/%s", url.rstrip("/"), relative)
        fs.get(remote, str(local))
    return target


def content_hash(directory: Path, names: tuple[str, ...] = (CONFIG_NAME, WEIGHTS_NAME)) -> str:
    """`sha256:<hex>` over config.json then the weights (`model.safetensors`; `model.onnx` of an export)."""
    h = hashlib.sha256()
    for name in names:
        with open(directory / name, "rb") as f:
            while chunk := f.read(8 << 20):
                h.update(chunk)
    return "sha256:" + h.hexdigest()


def check_weights(location: str, name: str = WEIGHTS_NAME) -> None:
    """Check that a checkpoint's safetensors file is whole, from its header and size alone (no weights
    are read): a copy cut short is refused with one line before a run claims its output.

    Raises:
        ValueError: the file is missing, its header does not parse, or its size is not what the header
            describes.
    """
    if is_hub_id(location):
        return  # huggingface_hub checks what it downloads
    where = storage.fs_join(location, name)
    if is_url(location):
        fs, root = fsspec.core.url_to_fs(location)
        path = storage.fs_join(root, name)
    else:
        fs, path = fsspec.filesystem("file"), str(local_dir(location, files=(CONFIG_NAME,)) / name)
    try:
        size = fs.size(path)
        with fs.open(path, "rb") as f:
            head = f.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            header = json.loads(f.read(length)) if 0 < length < 100_000_000 else None
    except FileNotFoundError:
        raise ValueError(f"{where}: missing; the checkpoint is incomplete") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{where}: not a safetensors file ({exc}); copy the checkpoint again") from None
    if not isinstance(header, dict):
        raise ValueError(f"{where}: not a safetensors file ({size} bytes); copy the checkpoint again")
    ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    expected = 8 + length + max(ends, default=0)
    if size != expected:
        raise ValueError(
            f"{where}: {size:,} bytes, but its header describes {expected:,}: the file is cut short "
            "or damaged; copy the checkpoint again"
        )


def put_files(staging: Path, location: str, names: tuple[str, ...]) -> None:
    """Copy `names` from a local staging folder to a local folder or fsspec URL (created if needed)."""
    fs, path = fsspec.core.url_to_fs(location)
    fs.makedirs(path, exist_ok=True)
    for name in names:
        fs.put(str(staging / name), storage.fs_join(path, name))


def read_json(location: str, name: str) -> dict | None:
    """One small JSON file of a checkpoint, without fetching its weights; None if absent.

    Raises:
        ValueError: the file is no JSON object (one line naming it).
    """
    if is_url(location):
        fs, path = fsspec.core.url_to_fs(location)
        remote = storage.fs_join(path, name)
        if not fs.exists(remote):
            return None
        with fs.open(remote, "rb") as f:
            text = f.read()
        where = f"{location.rstrip('/')}/{name}"
    else:
        path = local_dir(location, files=(name,)) / name
        if not path.exists():
            return None
        text, where = path.read_bytes(), str(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ValueError(f"{where}: not JSON ({exc}); the checkpoint is damaged") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where}: JSON {type(data).__name__}, not an object; the checkpoint is damaged")
    return data


def config_json(architecture: str, config: Any) -> str:
    """The `config.json` text of a model: its architecture name and config fields."""
    data = {"architecture": architecture, **config_to_dict(config)}
    return json.dumps(data, indent=2, sort_keys=True) + "\n"


WEIGHTS_DTYPES = ("float16", "bfloat16", "float32")


def storage_dtype(weights_dtype: str | None) -> torch.dtype | None:
    """The torch dtype a checkpoint stores its floating-point weights as (`WEIGHTS_DTYPES`); None: as they are.

    Raises:
        ValueError: not one of `WEIGHTS_DTYPES`.
    """
    if weights_dtype is None:
        return None
    if weights_dtype not in WEIGHTS_DTYPES:
        raise ValueError(f"weights_dtype {weights_dtype!r} is not one of {', '.join(WEIGHTS_DTYPES)}")
    import torch

    return getattr(torch, weights_dtype)


def round_weights(model: nn.Module, weights_dtype: str | None) -> nn.Module:
    """Round `model`'s floating-point weights and buffers in place to what `save_pretrained(weights_dtype=...)`
    stores and `from_pretrained` loads back, so that what is measured on it (a training job's test metrics) is
    what the saved checkpoint scores."""
    stored = storage_dtype(weights_dtype)
    if stored is not None:
        import torch

        with torch.no_grad():
            for tensor in model.state_dict().values():
                if tensor.is_floating_point():
                    tensor.copy_(tensor.to(stored))
    return model


def parameter_counts(model: nn.Module) -> dict[str, int]:
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"total": total, "trainable": trainable}


class CheckpointMixin:
    """`save_pretrained` / `from_pretrained` for an `nn.Module` built from one config dataclass.

    Subclasses set `architecture` (the name written into `config.json`) and `config_class`, and take
    the config as their first `__init__` argument (any others optional, e.g. pretrained parts).
    """

    architecture: ClassVar[str]
    config_class: ClassVar[type]
    config: Any

    def parts(self) -> dict[str, list[nn.Module]]:
        """Named parts for per-part parameter and FLOP counts (`model-info`, the card); none by default."""
        return {}

    def card(self) -> dict:
        """What the card says about any checkpoint of this class (subclasses add their own fields)."""
        counts = parameter_counts(self)  # type: ignore[arg-type]
        for name, modules in self.parts().items():
            counts[name] = sum(p.numel() for m in modules for p in m.parameters())
        return {
            "architecture": self.architecture,
            "preprocessing": self.config.preprocessing.to_dict(),
            "mos_scale": self.config.mos_scale,
            "parameters": counts,
            "code_version": code_version(),
        }

    def save_pretrained(self, location: str, card: dict | None = None, weights_dtype: str | None = None) -> dict:
        """Write config, weights and card to a local folder or fsspec URL; returns the card.

        Args:
            location: destination folder or URL (created if needed).
            card: extra card fields (training data, commands, metrics); merged over the defaults.
            weights_dtype: store the floating-point weights as this dtype (`WEIGHTS_DTYPES`; `"float16"`,
                `"bfloat16"`: half the file): `from_pretrained` casts them back to the model's float32, so only
                the rounding of the weights changes (`round_weights`), and the card says so; None keeps them as
                they are.
        """
        stored = storage_dtype(weights_dtype)
        with tempfile.TemporaryDirectory() as tmp:
            staging = Path(tmp) if is_url(location) else Path(location)
            staging.mkdir(parents=True, exist_ok=True)
            (staging / CONFIG_NAME).write_text(config_json(self.architecture, self.config))
            state = {
                k: (v.to(stored) if stored is not None and v.is_floating_point() else v).detach().contiguous().cpu()
                for k, v in self.state_dict().items()  # type: ignore[attr-defined]
            }
            import safetensors.torch

            safetensors.torch.save_file(state, str(staging / WEIGHTS_NAME), metadata={"format": "pt"})
            stored_as = {"weights_dtype": weights_dtype} if weights_dtype else {}
            full_card = {**self.card(), **(card or {}), **stored_as, "sha256": content_hash(staging)}
            (staging / CARD_NAME).write_text(json.dumps(full_card, indent=2, sort_keys=True) + "\n")
            if is_url(location):
                put_files(staging, location, FILES)
        return full_card

    @classmethod
    def from_config(cls: type[M], config: Any, device: str | torch.device = "cpu") -> M:
        """A randomly initialised model (pass `device="meta"` to count parameters without memory)."""
        import torch

        with torch.device(device):
            return cls(config)  # type: ignore[call-arg]

    @classmethod
    def from_pretrained(cls: type[M], location: str, device: str | torch.device = "cpu", verify: bool = True) -> M:
        """Load a checkpoint from a folder, fsspec URL or Hub repo id.

        Args:
            location: where the checkpoint is.
            device: where the weights go.
            verify: check the content hash against the card (catches corrupted or edited files).
        """
        directory = local_dir(location)
        config_data = read_json(str(directory), CONFIG_NAME)
        if config_data is None:
            raise FileNotFoundError(f"{location}: no {CONFIG_NAME} (not a DP-IQA checkpoint)")
        if config_data.get("architecture") != cls.architecture:
            raise ValueError(
                f"{location}: checkpoint is a {config_data.get('architecture')!r}, not a {cls.architecture!r}"
            )
        card_path = directory / CARD_NAME
        if verify and card_path.exists():
            expected = (read_json(str(directory), CARD_NAME) or {}).get("sha256")
            actual = content_hash(directory)
            if expected and expected != actual:
                raise ValueError(f"{location}: content hash {actual} does not match card.json ({expected})")
        config = config_from_dict(cls.config_class, config_data)
        # Build on the meta device and assign the loaded tensors: no time spent on random init.
        model = cls.from_config(config, device="meta")
        import safetensors.torch

        state = safetensors.torch.load_file(str(directory / WEIGHTS_NAME), device=str(device))
        # Tensors read from the file are not 64-byte aligned, which makes CPU kernels take other code
        # paths (last-bit differences); fresh allocations keep a round trip bit-identical. Weights stored at
        # a smaller float dtype (`save_pretrained(weights_dtype=...)`) come back as the model's own dtype.
        built = model.state_dict()  # type: ignore[attr-defined]
        state = {
            k: v.to(built[k].dtype if k in built and v.is_floating_point() else v.dtype, copy=True)
            for k, v in state.items()
        }
        missing, unexpected = model.load_state_dict(state, strict=False, assign=True)  # type: ignore[attr-defined]
        if unexpected or [k for k in missing if not k.endswith("num_batches_tracked")]:
            raise ValueError(
                f"{location}: weights do not fit the config (missing {missing[:5]}, unexpected {unexpected[:5]})"
            )
        if any(t.is_meta for t in list(model.parameters()) + list(model.buffers())):  # type: ignore[attr-defined]
            model = cls.from_config(config, device=device)  # a buffer that is not saved: build for real
            model.load_state_dict(state)  # type: ignore[attr-defined]
        return model.eval()  # type: ignore[attr-defined,return-value]
