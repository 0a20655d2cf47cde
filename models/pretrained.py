"""Where the teacher's pretrained parts come from: the default ids (the Stable Diffusion v1.5 weights and the
CLIP text model that embeds the prompts), which files of such a folder the teacher reads, fetching them from
the Hub or any fsspec URL, and checking a source before any weights load. Importing this module costs
nothing (no torch): the driver checks sources with it."""

from __future__ import annotations

import re
from typing import Any

# The weights of `runwayml/stable-diffusion-v1-5`, which is gone from the Hub, live on under this id.
STABLE_DIFFUSION = "stable-diffusion-v1-5/stable-diffusion-v1-5"
CLIP_TEXT = "openai/clip-vit-large-patch14"


def fetch(location: str, storage_options: dict | None, select: Any) -> str:
    """A location from_pretrained can read: local folders and Hub ids as they are, fsspec URLs mirrored
    into the local cache (only the files `select(relative paths)` picks)."""
    if location.startswith("file://"):
        return location[len("file://") :]
    if _checkpoint().is_url(location):
        from dpiqa import storage

        fs, root = storage.get_fs(location, storage_options)
        root = root.rstrip("/")
        chosen = select([p[len(root) + 1 :] for p in fs.find(root)])
        return str(_checkpoint().mirror(location, chosen.__contains__, storage_options))
    return location


def weight_files(files: list[str], folder: str, stem: str, variant: str | None) -> list[str]:
    """The weight files of one component in `folder`: its safetensors (one file, or shards with their index),
    else its `.bin` files; [] when it has neither."""
    want = f"{stem}.{variant}" if variant else stem
    pattern = re.compile(rf"^{re.escape(want)}(-\d{{5}}-of-\d{{5}})?\.(safetensors|bin)(\.index\.json)?$")
    for kind in ("safetensors", "bin"):
        found = []
        for f in files:
            name = f[len(folder) :]
            match = pattern.match(name) if f.startswith(folder) and "/" not in name else None
            if match and match.group(2) == kind:
                found.append(f)
        if found:
            return found
    return []


def sd_files(files: list[str], variant: str | None, sd: str) -> set[str]:
    """What the teacher reads of a Stable Diffusion folder: `vae/` and `unet/` configs and weights.

    Raises:
        ValueError: a config or the weights of one of them are missing (one line naming which).
    """
    chosen = set()
    for part in ("vae", "unet"):
        weights = weight_files(files, f"{part}/", "diffusion_pytorch_model", variant)
        if f"{part}/config.json" not in files:
            raise ValueError(f"{sd}: not a Stable Diffusion folder: {part}/config.json is missing")
        if not weights:
            name = "diffusion_pytorch_model" + (f".{variant}" if variant else "")
            raise ValueError(f"{sd}: {part}/ has no weights ({name}.safetensors or {name}.bin)")
        chosen |= {f"{part}/config.json", *weights}
    return chosen


def clip_files(files: list[str], clip: str) -> set[str]:
    """What the teacher reads of a CLIP folder: configs, tokenizer files, and the weights.

    Raises:
        ValueError: its config or weights are missing.
    """
    top = [f for f in files if "/" not in f]
    if "config.json" not in top:
        raise ValueError(f"{clip}: not a CLIP model folder: config.json is missing")
    weights = weight_files(files, "", "model", None) or weight_files(files, "", "pytorch_model", None)
    if not weights:
        raise ValueError(f"{clip}: has no weights (model.safetensors or pytorch_model.bin)")
    return {f for f in top if f.endswith((".json", ".txt"))} | set(weights)


def check_pretrained_sources(sd: str, clip: str, storage_options: dict | None = None) -> None:
    """Check, without loading any weights, that the Stable Diffusion and CLIP folders hold what the teacher
    reads; a Hub id is checked by fetching its small config file (which fails at once where the Hub cannot
    be reached and nothing is cached, e.g. with HF_HUB_OFFLINE=1).

    Raises:
        ValueError: one line naming the location and what is missing.
    """
    checks = (
        (sd, lambda f: sd_files(f, None, sd), "unet/config.json"),
        (clip, lambda f: clip_files(f, clip), "config.json"),
    )
    for location, select, config_file in checks:
        if _checkpoint().is_hub_id(location):
            from huggingface_hub import snapshot_download

            try:
                snapshot_download(repo_id=location, allow_patterns=[config_file])
            except Exception as exc:  # any failure means the same to the user
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ValueError(
                    f"{location}: cannot be fetched from the Hugging Face Hub ({first}); download "
                    "it where the Hub is reachable and pass its folder or URL instead"
                ) from None
            continue
        from dpiqa import storage

        path = location[len("file://") :] if location.startswith("file://") else location
        fs, root = storage.get_fs(path, storage_options)
        if not fs.isdir(root):
            raise ValueError(f"{location}: no such folder, URL or Hub repo")
        root = root.rstrip("/")
        select([p[len(root) + 1 :] for p in fs.find(root)])


def _checkpoint() -> Any:
    from dpiqa.models import checkpoint  # fsspec and the cache: only when something is fetched

    return checkpoint
