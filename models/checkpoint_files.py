"""A checkpoint's files: their names, where they are (folder, fsspec URL, Hub repo, local cache), hashing and checks."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from dpiqa import storage
from dpiqa.json_object import NotAJsonObject, json_object

if TYPE_CHECKING:  # torch and safetensors.torch are imported where weights are read or written
    pass

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "card.json"
FILES = (CONFIG_NAME, WEIGHTS_NAME, CARD_NAME)
ONNX_NAME = "model.onnx"
ONNX_FILES = (CONFIG_NAME, ONNX_NAME, CARD_NAME)


def cache_dir() -> Path:
    return Path(os.environ.get("DPIQA_CACHE", Path.home() / ".cache" / "dpiqa"))


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
        fs, path = storage.get_fs(location)
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
    fs, root = storage.get_fs(url, storage_options)
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
        fs, root = storage.get_fs(location)
        path = storage.fs_join(root, name)
    else:
        fs, path = storage.get_fs(str(local_dir(location, files=(CONFIG_NAME,)) / name))
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


def put_files(staging: Path, location: str, names: tuple[str, ...], storage_options: dict | None = None) -> None:
    """Copy `names` from a local staging folder to a local folder or fsspec URL (created if needed)."""
    fs, path = storage.get_fs(location, storage_options)
    fs.makedirs(path, exist_ok=True)
    for name in names:
        fs.put(str(staging / name), storage.fs_join(path, name))


def read_json(location: str, name: str) -> dict | None:
    """One small JSON file of a checkpoint, without fetching its weights; None if absent.

    Raises:
        ValueError: the file is no JSON object (one line naming it).
    """
    if is_url(location):
        fs, path = storage.get_fs(location)
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
        return json_object(text)
    except NotAJsonObject as exc:
        raise ValueError(f"{where}: {exc}; the checkpoint is damaged") from None
