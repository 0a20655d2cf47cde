"""The DP-IQA authors' released checkpoints (teacher and student `.pth`, the KonIQ student's ONNX) converted
into our checkpoint folders: every key mapped onto our modules or dropped because their code never uses it.

The facts this relies on (key names, shapes, what is unused, the test-time preprocessing and the MOS/100 output)
are in the project's spec of the released files; nothing of the authors' code is used or copied. Their weights
are licensed CC BY-NC-SA (non-commercial, share-alike, attribution): every converted card says so.

How their modules differ from ours, and how the conversion keeps their function exactly:

- teacher decoder (`QFD.*`): their squeeze-and-excitation layers are `Linear` layers without biases; ours are
  timm's `SEModule` (1x1 convs) built without biases (`TeacherConfig.se_bias=False`), the weights reshaped to
  `(out, in, 1, 1)`. Their per-level convs are numbered shallowest first (`conv1` reads the last up block,
  `conv4` the first: `conv3` and `conv4` have the same shape, so they are mapped by name), and their fused conv
  reads the levels shallowest first; ours deepest first, so the fused conv's input blocks are reversed.
- `gamma` is a top-level parameter of theirs; ours is `text_adapter.gamma`.
- their U-Net is fine-tuned as a whole (not Stable Diffusion's weights); it is taken from the file as it is.
- the prompt embeddings are not in their file: they are computed with CLIP from the 1,485 prompts
  (`dpiqa-quality-1485`, the same texts in the same order) and stored in our checkpoint.
- their teacher samples the VAE posterior at test time; ours takes its mean unless `inference_latent="sample"`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dpiqa import storage
from dpiqa.errors import UsageError
from dpiqa.models import checkpoint

if TYPE_CHECKING:
    import torch
    from torch import nn

log = logging.getLogger(__name__)

AUTHORS = "RomGai/DP-IQA (Gai et al., DP-IQA, arXiv 2405.19996)"
LICENCE = {
    "weights": "CC BY-NC-SA",
    "summary": "the authors' weights and anything converted from them may be used for non-commercial "
    "purposes only, with attribution to the DP-IQA authors, and shared only under the same licence; "
    "dpiqa's own code licence does not extend to these weights",
    "source": "https://github.com/RomGai/DP-IQA",
}
DATASETS = {
    "koniq": "KonIQ-10k",
    "clive": "CLIVE (LIVE In the Wild Challenge)",
    "livefb": "LIVE-FB (FLIVE)",
    "spaq": "SPAQ",
}
# {dataset}_model_{plcc,srcc}_best.pth (teacher), {dataset}_student_model_{plcc,srcc}_best.pth (student)
RELEASED_NAME = re.compile(
    r"^(?P<dataset>koniq|clive|livefb|spaq)_(?P<student>student_)?model_(?P<metric>plcc|srcc)_best"
)
ONNX_STUDENT_DATASET = "koniq"  # the only ONNX student released (`student_model.onnx`) was trained on KonIQ-10k
PREPROCESSING_NOTE = (
    "the authors' test transform: RGB, resized to 512x512 with PIL's bilinear filter (aspect not kept), "
    "values in [0, 1] without normalisation; the model predicts MOS/100, reported x100 (mos_scale 100)"
)

# Keys of their teacher that their forward pass never uses: dropped, with why.
TEACHER_DROPPED: tuple[tuple[str, str], ...] = (
    ("vae.decoder.", "the VAE's decoder: the teacher only encodes"),
    ("vae.post_quant_conv.", "the VAE's decoder: the teacher only encodes"),
    ("QFD.bnc1.", "a BatchNorm the authors' decoder builds and never calls"),
    ("QFD.classifier_dist.", "a 24-way classifier the authors' decoder builds and never calls"),
    ("text_encoder.", "Stable Diffusion's CLIP text encoder, loaded and never used by an earlier version"),
)
# The VAE attention names of diffusers before its attention rewrite (renamed defensively, as diffusers does).
OLD_VAE_ATTENTION = re.compile(
    r"^(vae\.(?:encoder|decoder)\.mid_block\.attentions\.\d+\.)(query|key|value|proj_attn)\."
)
NEW_VAE_ATTENTION = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


class AuthorsCheckpointError(ValueError):
    """An authors' file that cannot be converted (one line naming the file and the key or object; the command
    could not start on what it names: exit status 4)."""


# ---------------------------------------------------------------- reading


def file_sha256(path: str, storage_options: dict | None = None) -> tuple[str, int]:
    """`(sha256:<hex>, bytes)` of a local file or fsspec URL."""
    fs, where = storage.get_fs(path, storage_options)
    h, size = hashlib.sha256(), 0
    with fs.open(where, "rb") as f:
        while chunk := f.read(8 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def read_pth(path: str, storage_options: dict | None = None) -> dict[str, torch.Tensor]:
    """A state dict from a pickled torch file, read with `torch.load(weights_only=True)` (tensors and plain
    containers only, no code) onto the CPU; a local file is memory-mapped (a 4.3 GB teacher is not copied).

    Raises:
        AuthorsCheckpointError: the file holds anything but one flat dict of names to tensors.
    """
    import pickle

    import torch

    name = os.path.basename(path.rstrip("/"))
    try:
        if checkpoint.is_url(path):
            fs, where = storage.get_fs(path, storage_options)
            with fs.open(where, "rb") as f:
                state: Any = torch.load(io.BytesIO(f.read()), map_location="cpu", weights_only=True)
        else:
            local = path[len("file://") :] if path.startswith("file://") else path
            try:
                state = torch.load(local, map_location="cpu", weights_only=True, mmap=True)
            except RuntimeError as exc:  # mmap needs the zip format; a legacy file is read whole
                if "mmap" not in str(exc):
                    raise
                state = torch.load(local, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, which we never do; keep only what the file holds
        found = re.search(r"Unsupported global: GLOBAL (\S+)", str(exc))
        what = f"a {found[1]}" if found else "an object torch.load(weights_only=True) refuses"
        raise AuthorsCheckpointError(
            f"{name}: holds objects other than tensors ({what}), refused: only a state dict of tensors is read"
        ) from None
    except Exception as exc:  # a damaged or foreign file is one line, whatever the library says
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AuthorsCheckpointError(f"{name}: not a readable torch file ({type(exc).__name__}: {first})") from None
    if not isinstance(state, dict):
        raise AuthorsCheckpointError(f"{name}: holds a {type(state).__name__}, not a state dict; refused")
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            raise AuthorsCheckpointError(
                f"{name}: entry {key!r} is a {type(value).__name__}, not a tensor; only a state dict of "
                "tensors is converted"
            )
    return state


def kind_of(keys: Any, name: str) -> str:
    """`teacher` or `student`, from the key prefixes of an authors' state dict."""
    keys = list(keys)
    if any(k.startswith("base_model.") for k in keys):
        return "student"
    if any(k.startswith(("unet.", "QFD.")) for k in keys):
        return "teacher"
    raise AuthorsCheckpointError(
        f"{name}: not a DP-IQA teacher or student state dict (no unet.*, QFD.* or base_model.* keys; "
        f"first key: {keys[0] if keys else 'none'})"
    )


# ---------------------------------------------------------------- key mapping (ours -> theirs)


# Our key -> theirs: (our prefix, their prefix) renames, then (our key's pattern, their key from the match and the
# decoder's levels); one table per model, read by `_their_key`.
MLP = (r"mlp\.net\.([135])\.(weight|bias)", "fc{}.{}")  # the score MLP: our Sequential's Linear layers 1, 3, 5
TEACHER_PREFIXES = (("vae.", "vae."), ("unet.", "unet."), ("image_adapter.", "img_adapter."))
TEACHER_PATTERNS: tuple[tuple[str, Callable[[re.Match, int], str]], ...] = (
    (r"text_adapter\.mlp\.([02])\.(weight|bias)", lambda m, n: f"text_adapter.fc.{m[1]}.{m[2]}"),
    (r"decoder\.levels\.(\d+)\.0\.(weight|bias)", lambda m, n: f"QFD.conv{n - int(m[1])}.{m[2]}"),
    (
        r"decoder\.levels\.(\d+)\.1\.fc([12])\.weight",
        lambda m, n: f"QFD.se{n - int(m[1])}.fc.{2 * int(m[2]) - 2}.weight",
    ),
    (r"decoder\.fuse\.0\.(weight|bias)", lambda m, n: f"QFD.fuse_conv.{m[1]}"),
    (r"decoder\.fuse\.1\.fc([12])\.weight", lambda m, n: f"QFD.se_fuse.fc.{2 * int(m[1]) - 2}.weight"),
    (r"decoder\.to_map\.([024])\.(weight|bias)", lambda m, n: f"QFD.conv_score{int(m[1]) // 2 + 1}.{m[2]}"),
    (MLP[0], lambda m, n: "QFD." + MLP[1].format(int(m[1]) // 2 + 1, m[2])),
)
STUDENT_PREFIXES = (("backbone.features.", "base_model.features."), ("map_head.", "conv_transpose."))
STUDENT_PATTERNS: tuple[tuple[str, Callable[[re.Match, int], str]], ...] = (
    (MLP[0], lambda m, n: MLP[1].format(int(m[1]) // 2 + 1, m[2])),
)


def _their_key(ours: str, prefixes: tuple, patterns: tuple, levels: int, model: str) -> str:
    for prefix, theirs in prefixes:
        if ours.startswith(prefix):
            return theirs + ours[len(prefix) :]
    for pattern, theirs_of in patterns:
        if m := re.fullmatch(pattern, ours):
            return theirs_of(m, levels)
    raise ValueError(f"no authors' key for our {model} key {ours!r}")  # a model this module does not know


def teacher_key(ours: str, levels: int = 4) -> str | None:
    """The authors' key that holds our teacher parameter `ours` (None: not in their file, the prompt embeddings).

    Args:
        ours: a key of our teacher's state dict.
        levels: the decoder's levels (4): their `conv{n}` reads the n-th shallowest, our `levels.{i}` the i-th deepest.
    """
    if ours == "prompt_embeddings":
        return None
    if ours == "text_adapter.gamma":
        return "gamma"
    return _their_key(ours, TEACHER_PREFIXES, TEACHER_PATTERNS, levels, "teacher")


def student_key(ours: str) -> str:
    """The authors' key that holds our student parameter `ours`."""
    return _their_key(ours, STUDENT_PREFIXES, STUDENT_PATTERNS, 0, "student")


def _is_se(ours: str) -> bool:
    return bool(re.fullmatch(r"decoder\.(levels\.\d+|fuse)\.1\.fc[12]\.weight", ours))


def theirs_shape(ours: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the authors' tensor has where ours has `shape` (their SE layers are `Linear`: no `1, 1`)."""
    return shape[:2] if _is_se(ours) else shape


def to_ours(ours: str, tensor: torch.Tensor, shape: tuple[int, ...], levels: int = 4) -> torch.Tensor:
    """The authors' tensor for our key `ours`, laid out as our module takes it (same function)."""
    if _is_se(ours):
        return tensor.reshape(shape)  # Linear (out, in) == 1x1 conv (out, in, 1, 1) on a pooled vector
    if ours == "decoder.fuse.0.weight":
        # theirs concatenates the levels shallowest first, ours deepest first: reverse the input blocks
        out, width = tensor.shape[:2]
        return tensor.reshape(out, levels, width // levels, *tensor.shape[2:]).flip(1).reshape(tensor.shape)
    return tensor


@dataclasses.dataclass
class Mapping:
    """What a conversion did with each key: `state` (our key -> tensor), `dropped` (reason -> their keys)."""

    state: dict[str, torch.Tensor]
    dropped: dict[str, list[str]]
    renamed: dict[str, str]

    def summary(self) -> dict:
        return {
            "mapped": len(self.state),
            "dropped": {reason: len(keys) for reason, keys in self.dropped.items()},
            "renamed_old_vae_attention_keys": len(self.renamed),
        }


def map_state_dict(
    state: dict[str, torch.Tensor],
    expected: dict[str, tuple[torch.Size, torch.dtype]],
    key_of: Callable[[str], str | None],
    dropped: tuple[tuple[str, str], ...],
    name: str,
    transform: Callable[[str, torch.Tensor, tuple[int, ...]], torch.Tensor] | None = None,
) -> Mapping:
    """Account for every key of an authors' state dict: mapped onto ours (`key_of`: ours -> theirs), or dropped
    because their code never uses it; anything else stops the conversion.

    Args:
        state: their state dict.
        expected: our model's keys -> (shape, dtype), those the file must supply (`key_of` not None).
        key_of: our key -> their key (None: not from the file).
        dropped: (their key prefix, why) for keys their forward pass never uses.
        name: the file's name, for messages.
        transform: their tensor -> ours (`to_ours`), after the shape check.

    Raises:
        AuthorsCheckpointError: an unexpected key, a missing key or a shape that differs, named.
    """
    theirs_to_ours = {key_of(k): k for k in expected}
    theirs_to_ours.pop(None, None)
    out: dict[str, torch.Tensor] = {}
    drops: dict[str, list[str]] = {}
    renamed: dict[str, str] = {}
    for key, tensor in state.items():
        lookup = key
        if m := OLD_VAE_ATTENTION.match(key):
            lookup = m[1] + NEW_VAE_ATTENTION[m[2]] + "." + key[m.end() :]
            renamed[key] = lookup
        why = next((why for prefix, why in dropped if lookup.startswith(prefix)), None)
        if why is not None:
            drops.setdefault(why, []).append(key)
            continue
        ours = theirs_to_ours.get(lookup)
        if ours is None:
            raise AuthorsCheckpointError(f"{name}: unexpected key {key} (not in the released DP-IQA layout); refused")
        if ours in out:
            raise AuthorsCheckpointError(f"{name}: key {key} duplicates {theirs_to_ours_key(renamed, lookup)}")
        shape, dtype = expected[ours]
        want = theirs_shape(ours, tuple(shape))
        if tuple(tensor.shape) != want:
            raise AuthorsCheckpointError(f"{name}: key {key} has shape {tuple(tensor.shape)}, expected {want}; refused")
        if tensor.is_floating_point() != dtype.is_floating_point:
            raise AuthorsCheckpointError(f"{name}: key {key} is {tensor.dtype}, expected {dtype}; refused")
        tensor = transform(ours, tensor, tuple(shape)) if transform else tensor
        out[ours] = tensor.to(dtype)
    missing = [theirs for theirs, ours in theirs_to_ours.items() if ours not in out]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise AuthorsCheckpointError(f"{name}: missing key {missing[0]}{more}; refused")
    return Mapping(out, drops, renamed)


def theirs_to_ours_key(renamed: dict[str, str], lookup: str) -> str:
    """The key of the file that was mapped first onto `lookup` (for the duplicate message)."""
    return next((old for old, new in renamed.items() if new == lookup), lookup)


def expected_state(model: nn.Module) -> dict[str, tuple[torch.Size, torch.dtype]]:
    return {k: (v.shape, v.dtype) for k, v in model.state_dict().items()}


def map_teacher(state: dict[str, torch.Tensor], model: nn.Module, name: str) -> Mapping:
    """Their teacher state dict -> ours (`model`: our teacher, built on any device, meta included)."""
    levels = len(model.config.decoder_levels)
    expected = {k: v for k, v in expected_state(model).items() if teacher_key(k, levels) is not None}
    return map_state_dict(
        state,
        expected,
        lambda k: teacher_key(k, levels),
        TEACHER_DROPPED,
        name,
        lambda k, t, s: to_ours(k, t, s, levels),
    )


def map_student(state: dict[str, torch.Tensor], model: nn.Module, name: str) -> Mapping:
    """Their student state dict -> ours."""
    return map_state_dict(state, expected_state(model), student_key, (), name)


# ---------------------------------------------------------------- configs


def teacher_config(config: Any = None, inference_latent: str = "mean") -> Any:
    """Our teacher config for their teacher: the paper's sizes (or `config`'s), SE layers without biases,
    their input contract, the 1,485 prompts."""
    from dpiqa.models.prompts import DEFAULT_SET
    from dpiqa.models.teacher_config import TeacherConfig

    config = config or TeacherConfig()
    paper = TeacherConfig()
    for field in ("text_adapter", "image_adapter", "decoder_levels", "timestep"):
        if getattr(config, field) != getattr(paper, field):
            raise ValueError(
                f"the authors' teacher has {field}={getattr(paper, field)!r}, not {getattr(config, field)!r}"
            )
    return dataclasses.replace(
        config.with_prompt_set(DEFAULT_SET),
        prompt_pooling="eos",
        se_bias=False,
        value_range=(0.0, 1.0),
        interpolation="bilinear",
        mos_scale=100.0,
        inference_latent=inference_latent,
    )


def student_config(config: Any = None) -> Any:
    """Our student config for their student: torchvision's EfficientNet-B7 at 512 (or `config`'s sizes)."""
    from dpiqa.models.student_config import StudentConfig

    config = config or StudentConfig()
    if not config.backbone.startswith("torchvision/") or config.aux_features or config.input_norm:
        raise ValueError(
            f"the authors' student is a torchvision backbone without extra features or input normalisation, "
            f"not {config.backbone!r}"
        )
    return dataclasses.replace(config, value_range=(0.0, 1.0), interpolation="bilinear", mos_scale=100.0)


# ---------------------------------------------------------------- conversion


def trained_on(source: str, dataset: str | None) -> tuple[str, str | None]:
    """`(dataset, selected by plcc/srcc or None)` from `--dataset` or the released file name."""
    base = os.path.basename(source.rstrip("/"))
    match = RELEASED_NAME.match(base)
    named = match["dataset"] if match else (ONNX_STUDENT_DATASET if base == "student_model.onnx" else None)
    if dataset is not None and dataset not in DATASETS:
        raise UsageError(f"--dataset must be one of {', '.join(DATASETS)}, not {dataset!r}")
    if dataset is not None and named is not None and dataset != named:
        raise UsageError(f"{base}: the released name says it was trained on {named}, not {dataset}")
    if dataset is None and named is None:
        raise UsageError(
            f"{base}: not a released file name ({{dataset}}_model_{{plcc,srcc}}_best.pth, ...): "
            f"say which dataset it was trained on with --dataset ({', '.join(DATASETS)})"
        )
    return dataset or named, (match["metric"] if match else None)


def source_card(source: str, dataset: str, metric: str | None, kind: str, storage_options: dict | None) -> dict:
    digest, size = file_sha256(source, storage_options)
    return {
        "source": {
            "file": os.path.basename(source.rstrip("/")),
            "location": source,
            "sha256": digest,
            "bytes": size,
            "authors": AUTHORS,
            "model": kind,
        },
        "trained_on": {
            "dataset": dataset,
            "name": DATASETS[dataset],
            "selected_by": f"best test-split {metric.upper()}" if metric else "unknown",
            "split": "the authors' unseeded random 80/20 split (model chosen on its test part): their scores on "
            "that dataset are not held-out numbers for us",
        },
        "licence": LICENCE,
        "preprocessing_note": PREPROCESSING_NOTE,
    }


def _refuse_existing(output: str, overwrite: bool) -> None:
    fs, path = storage.get_fs(output)
    existing = [n for n in (*checkpoint.FILES, checkpoint.ONNX_NAME) if fs.exists(storage.fs_join(path, n))]
    if existing and not overwrite:
        raise ValueError(f"{output}: already holds {', '.join(existing)}; choose another --output or pass --overwrite")


def _drop_stale(output: str, name: str) -> None:
    """Remove the other format's weights file an overwritten folder may still hold (`model.onnx` beside new
    safetensors, or the reverse), so the folder is one checkpoint."""
    fs, path = storage.get_fs(output)
    if fs.exists(storage.fs_join(path, name)):
        fs.rm(storage.fs_join(path, name))


def _materialise(model: nn.Module, state: dict[str, torch.Tensor], cls: Any, config: Any) -> nn.Module:
    """Our model (built on the meta device) holding `state`; built for real where a buffer is not saved."""
    model.load_state_dict(state, strict=True, assign=True)
    if any(t.is_meta for t in [*model.parameters(), *model.buffers()]):
        model = cls.from_config(config, device="cpu")
        model.load_state_dict(state, strict=True)
    return model.eval()


def convert(
    source: str,
    output: str,
    clip: str | None = None,
    sd: str | None = None,
    dataset: str | None = None,
    config: Any = None,
    inference_latent: str = "mean",
    overwrite: bool = False,
    storage_options: dict | None = None,
) -> dict:
    """Convert one of the authors' files into our checkpoint folder at `output`; returns its card.

    Args:
        source: a teacher or student `.pth` (local or fsspec URL), or the KonIQ student's `.onnx`.
        output: the checkpoint folder to write (local or fsspec URL).
        clip: the CLIP model that embeds the 1,485 prompts (teacher only; their file does not hold the
            embeddings): `openai/clip-vit-large-patch14` or a folder/URL holding it.
        sd: a Stable Diffusion v1.5 folder to take the VAE encoder from, only for a teacher file without it.
        dataset: what it was trained on (`DATASETS`); default from the released file name.
        config: our config at other sizes (tests: a tiny teacher); default the paper's.
        inference_latent: the teacher's latent at inference, `mean` (ours, deterministic) or `sample` (theirs).
        overwrite: replace a checkpoint at `output`.
        storage_options: fsspec options for URLs.

    Raises:
        UsageError: options that cannot work (a missing `--clip`, an unknown dataset).
        AuthorsCheckpointError: the file holds something else than the released layout (one line naming it).
        ValueError: `output` holds a checkpoint already (without `overwrite`).
    """
    name = os.path.basename(source.rstrip("/"))
    dataset, metric = trained_on(source, dataset)
    if inference_latent not in ("mean", "sample"):
        raise UsageError(f"--latent must be mean or sample, not {inference_latent!r}")
    _refuse_existing(output, overwrite)
    about = {"source": source, "dataset": dataset, "metric": metric, "storage_options": storage_options}
    if source.endswith(".onnx"):
        if clip or sd or inference_latent != "mean":
            raise UsageError(f"{name}: --clip, --sd and --latent are for a teacher .pth, not the ONNX student")
        return convert_onnx_student(output, config, **about)
    state = read_pth(source, storage_options)
    kind = kind_of(state, name)
    if kind == "student":
        if clip or sd or inference_latent != "mean":
            raise UsageError(f"{name}: a student; --clip, --sd and --latent are for a teacher")
        return convert_student(state, output, config, **about)
    if not clip:
        raise UsageError(
            f"{name}: a teacher; its prompt embeddings are not in the file: pass --clip "
            "(openai/clip-vit-large-patch14, or a folder or URL holding it) to compute them"
        )
    return convert_teacher(state, output, clip, sd, config, inference_latent, **about)


def convert_student(
    state: dict,
    output: str,
    config: Any,
    source: str,
    dataset: str,
    metric: str | None,
    storage_options: dict | None = None,
) -> dict:
    """Their student state dict -> our student checkpoint at `output`."""
    from dpiqa.models.student import DPIQAStudent

    name = os.path.basename(source.rstrip("/"))
    config = student_config(config)
    model = DPIQAStudent.from_config(config, device="meta")
    mapping = map_student(state, model, name)
    model = _materialise(model, mapping.state, DPIQAStudent, config)
    card = source_card(source, dataset, metric, "student", storage_options)
    card["conversion"] = {
        **mapping.summary(),
        "function": "exactly the authors' student: EfficientNet-B7 features, transposed conv, ReLU, nearest to "
        "64, three linear layers; keys renamed only (base_model.* -> backbone.*, conv_transpose -> map_head, "
        "fc1-3 -> mlp.net)",
    }
    written = model.save_pretrained(output, card=card)
    _drop_stale(output, checkpoint.ONNX_NAME)
    log.info("%s -> %s: %d keys mapped (%s)", name, output, len(mapping.state), written["sha256"])
    return written


def convert_teacher(
    state: dict,
    output: str,
    clip: str,
    sd: str | None,
    config: Any,
    inference_latent: str,
    source: str,
    dataset: str,
    metric: str | None,
    storage_options: dict | None = None,
) -> dict:
    """Their teacher state dict -> our teacher checkpoint at `output` (prompt embeddings computed with `clip`)."""
    from dpiqa.models.clip_text import embed_prompts
    from dpiqa.models.prompts import prompt_texts
    from dpiqa.models.teacher import DPIQATeacher

    name = os.path.basename(source.rstrip("/"))
    config = dataclasses.replace(teacher_config(config, inference_latent), text_encoder=clip)
    model = DPIQATeacher.from_config(config, device="meta")
    has_vae = any(k.startswith(("vae.encoder.", "vae.quant_conv.")) for k in state)
    if sd and has_vae:
        raise UsageError(f"{name}: holds the VAE encoder; --sd is only for a file without it")
    if not sd and not has_vae:
        first = next(k for k in model.state_dict() if k.startswith("vae."))
        raise AuthorsCheckpointError(
            f"{name}: missing key {first} (no VAE encoder in the file): pass --sd with Stable Diffusion v1.5, "
            "whose frozen VAE the authors used"
        )
    if sd:
        state = {**state, **vae_encoder_from(sd, storage_options)}
    mapping = map_teacher(state, model, name)
    embeddings = embed_prompts(prompt_texts(config.prompt_set), clip, pooling="eos", storage_options=storage_options)
    if tuple(embeddings.shape) != (config.num_prompts, config.prompt_dim):
        raise UsageError(
            f"{clip}: gives prompt embeddings {tuple(embeddings.shape)}, the teacher's U-Net takes "
            f"({config.num_prompts}, {config.prompt_dim}); use openai/clip-vit-large-patch14"
        )
    model = _materialise(model, {**mapping.state, "prompt_embeddings": embeddings}, DPIQATeacher, config)
    card = source_card(source, dataset, metric, "teacher", storage_options)
    card["conversion"] = {
        **mapping.summary(),
        "vae_encoder_from": sd or "the file",
        "prompt_embeddings": f"computed with {clip} from the 1,485 prompts (dpiqa-quality-1485: the authors' "
        "texts in their order), CLIP's projected end-of-text feature, not normalised",
        "function": "the authors' teacher: the file's fine-tuned U-Net, image and text adapters and decoder; "
        "squeeze-and-excitation layers without biases as theirs (se_bias false), their conv1-conv4 mapped by "
        "name onto our levels 3-0 and their fused conv's input blocks reversed to our level order, gamma moved "
        "into the text adapter: the same function",
        "latent": "the VAE posterior mean (deterministic; theirs samples it)"
        if inference_latent == "mean"
        else "sampled from the VAE posterior at every forward pass, as theirs (scores vary between runs)",
    }
    written = model.save_pretrained(output, card=card)
    _drop_stale(output, checkpoint.ONNX_NAME)
    log.info("%s -> %s: %d keys mapped (%s)", name, output, len(mapping.state), written["sha256"])
    return written


def vae_encoder_from(sd: str, storage_options: dict | None = None) -> dict[str, torch.Tensor]:
    """Stable Diffusion's VAE encoder and `quant_conv` as `vae.*` keys (for a teacher file without them: it
    is frozen in the authors' training, so SD v1.5's own weights are the ones they used)."""
    from diffusers import AutoencoderKL

    from dpiqa.models.pretrained import fetch, sd_files

    location = fetch(sd, storage_options, lambda files: {f for f in sd_files(files, None, sd) if f.startswith("vae/")})
    vae = AutoencoderKL.from_pretrained(location, subfolder="vae")
    return {f"vae.{k}": v for k, v in vae.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}


# ---------------------------------------------------------------- the ONNX student


def convert_onnx_student(
    output: str,
    config: Any,
    source: str,
    dataset: str,
    metric: str | None,
    storage_options: dict | None = None,
) -> dict:
    """The KonIQ student's ONNX graph (input `input` float32 NCHW in [0, 1], outputs score (MOS/100) then map)
    -> our ONNX folder: their graph unchanged inside ours, which takes uint8 `images` (B, H, W, 3) as every
    export of ours does, divides by 255 as torchvision's `ToTensor`, and gives the score in MOS units.

    Their graph's weights are not turned into a safetensors checkpoint: an exported graph keeps no reliable
    parameter names (batch norms are folded into the convolutions), so a key-by-key mapping cannot be checked;
    their graph is run as it is instead.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from dpiqa.models.export import file_sha256 as onnx_sha256
    from dpiqa.models.onnx_scorer import INPUT_NAME, OUTPUT_NAMES, make_session
    from dpiqa.models.student_config import StudentConfig

    name = os.path.basename(source)
    config = student_config(config or StudentConfig())
    size = config.image_size
    fs, where = storage.get_fs(source, storage_options)
    with fs.open(where, "rb") as f:
        data = f.read()
    try:
        graph_model = onnx.load_from_string(data)
    except Exception as exc:  # any parser failure is this file's problem
        raise AuthorsCheckpointError(f"{name}: not an ONNX model ({type(exc).__name__})") from None
    initialisers = {i.name for i in graph_model.graph.initializer}
    inputs = [i for i in graph_model.graph.input if i.name not in initialisers]
    outputs = list(graph_model.graph.output)
    if len(inputs) != 1 or len(outputs) != 2:
        raise AuthorsCheckpointError(
            f"{name}: expected one image input and two outputs (score, map), found {len(inputs)} and {len(outputs)}"
        )
    dims = [d.dim_value if d.HasField("dim_value") else d.dim_param for d in inputs[0].type.tensor_type.shape.dim]
    if inputs[0].type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 4 or dims[1:] != [3, size, size]:
        raise AuthorsCheckpointError(
            f"{name}: input {inputs[0].name} is not float32 (batch, 3, {size}, {size}): {dims}"
        )
    batch = dims[0] if isinstance(dims[0], int) and dims[0] > 0 else "batch"
    graph = graph_model.graph
    taken = {n for node in graph.node for n in (*node.input, *node.output)} | initialisers
    if INPUT_NAME in taken or any(n in taken for n in OUTPUT_NAMES):
        raise AuthorsCheckpointError(
            f"{name}: already uses the names {INPUT_NAME}, score or map; not the authors' graph"
        )
    prefix = "dpiqa_wrap_"
    score_out, map_out = outputs[0].name, outputs[1].name
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(255.0, np.float32), prefix + "255"),
            numpy_helper.from_array(np.array(config.mos_scale, np.float32), prefix + "mos_scale"),
            numpy_helper.from_array(np.array([-1], np.int64), prefix + "flat"),
        ]
    )
    nodes = [
        helper.make_node("Cast", [INPUT_NAME], [prefix + "float"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", [prefix + "float"], [prefix + "nchw"], perm=[0, 3, 1, 2]),
        helper.make_node("Div", [prefix + "nchw", prefix + "255"], [inputs[0].name]),
    ]
    tail = [
        helper.make_node("Mul", [score_out, prefix + "mos_scale"], [prefix + "score_mos"]),
        helper.make_node("Reshape", [prefix + "score_mos", prefix + "flat"], ["score"]),
        helper.make_node("Identity", [map_out], ["map"]),
    ]
    body = list(graph.node)
    kept = [i for i in graph.input if i.name in initialisers]
    del graph.node[:]
    graph.node.extend(nodes + body + tail)
    del graph.input[:]
    # an old IR version lists the initialisers among the inputs too: they stay
    graph.input.extend([helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, [batch, size, size, 3]), *kept])
    del graph.output[:]
    graph.output.extend(
        [
            helper.make_tensor_value_info("score", TensorProto.FLOAT, [batch]),
            helper.make_tensor_value_info("map", TensorProto.FLOAT, [batch, *config.map_shape]),
        ]
    )
    onnx.checker.check_model(graph_model)
    card = source_card(source, dataset, metric, "student (ONNX)", storage_options)
    with tempfile.TemporaryDirectory(prefix="dpiqa-convert-") as tmp:
        staging = Path(tmp)
        onnx_path = staging / checkpoint.ONNX_NAME
        onnx.save(graph_model, str(onnx_path))
        session = make_session(onnx_path)
        probe = np.zeros((batch if isinstance(batch, int) else 1, size, size, 3), np.uint8)
        score, quality_map = session.run(list(OUTPUT_NAMES), {INPUT_NAME: probe})
        if score.shape != (len(probe),) or quality_map.shape != (len(probe), *config.map_shape):
            raise AuthorsCheckpointError(
                f"{name}: outputs {score.shape} and {quality_map.shape}, expected the score ({len(probe)}, 1) "
                f"first and the map ({len(probe)}, {', '.join(map(str, config.map_shape))}) second"
            )
        (staging / checkpoint.CONFIG_NAME).write_text(checkpoint.config_json("dpiqa-student", config))
        card.update(
            {
                "architecture": "dpiqa-student",
                "preprocessing": config.preprocessing.to_dict(),
                "mos_scale": config.mos_scale,
                "format": "onnx",
                "sha256": checkpoint.content_hash(staging, (checkpoint.CONFIG_NAME, checkpoint.ONNX_NAME)),
                "conversion": {
                    "function": "the authors' graph unchanged, wrapped: uint8 images (B, H, W, 3) -> float, "
                    "NCHW, / 255 (torchvision's ToTensor) in front; their first output x mos_scale as score "
                    "(batch,) and their second as map behind",
                    "their_input": inputs[0].name,
                    "their_outputs": [score_out, map_out],
                },
                "onnx": {
                    "file": checkpoint.ONNX_NAME,
                    "sha256": onnx_sha256(onnx_path),
                    "bytes": onnx_path.stat().st_size,
                    "opset": max(
                        (o.version for o in graph_model.opset_import if o.domain in ("", "ai.onnx")), default=0
                    ),
                    "dynamic_batch": not isinstance(batch, int),
                    "batch_size": batch if isinstance(batch, int) else None,
                },
            }
        )
        (staging / checkpoint.CARD_NAME).write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")
        checkpoint.put_files(staging, output, checkpoint.ONNX_FILES)
    _drop_stale(output, checkpoint.WEIGHTS_NAME)
    log.info("%s -> %s: ONNX graph wrapped (%s)", name, output, card["sha256"])
    return card
