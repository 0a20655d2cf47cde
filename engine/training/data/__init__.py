"""Training data on Ray Data: labelled images or shards, decoded to the model's input, with teacher outputs.

One module per concern: `labeled` (labelled images, synthetic distortions, ranking tables), `teacher` (the output
cache and the teacher's outputs), `shards` (WebDataset shards streamed), `features` (a frozen backbone's
features), `batches` (`EpochBatches`, torch conversion). Their public names are re-exported here.

Rows carry `image` (uint8 `(H, W, 3)` at the model's size; for a model that reads statistics measured before
the resize, also `statistics`, float32 `(k,)`), `target` (MOS / mos_scale, NaN where the
sample has no label), and for distillation `teacher_score` (MOS units, NaN where missing) and
`teacher_map` (float16 bytes, None where missing). With a ranking loss they also carry `rank_group` (the
source image, int64, -1 = none), `rank_family` (the distortion family) and `level` (0 = the reference):
see `dpiqa.models.distill.ranking_loss`.
"""

from dpiqa.engine.training.data.batches import EpochBatches, batch_tensor, to_torch
from dpiqa.engine.training.data.features import (
    FEATURE_FIELDS,
    BackboneFeatures,
    backbone_identity,
    with_backbone_features,
)
from dpiqa.engine.training.data.labeled import (
    RANK_COLUMNS,
    SYNTHETIC_DROP_PER_LEVEL,
    ReadLabeledImages,
    SyntheticDistortions,
    input_columns,
    labeled_dataset,
    labeled_rows,
    object_array,
    rank_id,
    rank_table_rows,
    rows_dataset,
)
from dpiqa.engine.training.data.shards import DecodeSamples, ShardsWithTeacher, shard_dataset
from dpiqa.engine.training.data.teacher import CachedScores, OutputCache, TeacherOutputs, with_teacher

__all__ = [
    "BackboneFeatures",
    "CachedScores",
    "DecodeSamples",
    "EpochBatches",
    "FEATURE_FIELDS",
    "OutputCache",
    "RANK_COLUMNS",
    "ReadLabeledImages",
    "SYNTHETIC_DROP_PER_LEVEL",
    "ShardsWithTeacher",
    "SyntheticDistortions",
    "TeacherOutputs",
    "backbone_identity",
    "batch_tensor",
    "input_columns",
    "labeled_dataset",
    "labeled_rows",
    "object_array",
    "rank_id",
    "rank_table_rows",
    "rows_dataset",
    "shard_dataset",
    "to_torch",
    "with_backbone_features",
    "with_teacher",
]
