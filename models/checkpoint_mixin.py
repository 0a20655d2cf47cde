"""`CheckpointMixin`: `save_pretrained` / `from_pretrained` for a model built from one config dataclass."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dpiqa.models.checkpoint_config import config_from_dict, config_json
from dpiqa.models.checkpoint_files import (
    CARD_NAME,
    CONFIG_NAME,
    FILES,
    WEIGHTS_NAME,
    content_hash,
    is_url,
    local_dir,
    put_files,
    read_json,
)
from dpiqa.models.checkpoint_weights import parameter_counts, storage_dtype
from dpiqa.version import code_version

if TYPE_CHECKING:  # torch and safetensors.torch are imported where weights are read or written
    import torch
    from torch import nn

M = TypeVar("M", bound="CheckpointMixin")


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
