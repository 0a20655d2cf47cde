"""`dpiqa filter`: scores + a threshold (or a top fraction) -> new WebDataset shards of the kept samples,
members copied byte for byte, one output shard per input shard, resumable.

Layout of the output location (local or any fsspec URL):

    NEW/NAME.tar           the kept samples of input shard NAME (NAME as in the scores: scores/NAME.parquet)
    NEW/keys/NAME.parquet  the kept samples' `shard` (URL), `key`, `index`, `score` (all of them: NEW/keys/)
    NEW/_done/NAME.json    completion marker, written LAST (counts, refused samples, the config hash)
    NEW/_run.json          the filter's identity (scores, mode, threshold); another one is refused
    NEW/manifest.json      written when a run ends

Members are written as `KEY.EXT` with the key and extension the shard reader reports (it lower-cases
extensions: `a.JPG` becomes `a.jpg`); their bytes are copied unchanged. A shard is done iff its marker exists. A rerun skips done shards and rewrites the others from the start
(a tar half-written by a killed run is replaced, never appended to), so no sample is written twice.

The parts: `cutoff.py` (which rows are kept: a minimum score, or the exact top fraction by radix
selection), `shard_copy.py` (one shard: read its scores, stream its tar, copy the kept members, write keys
and marker), `run.py` (`FilterConfig`, `run_filter`: pairing shards with their scores, the cut, the shard job).
"""

from dpiqa.engine.filter.cutoff import Cutoff, min_score_cutoff, sortable, top_fraction_cutoff, unsortable
from dpiqa.engine.filter.run import FilterConfig, FilterResult, match_shards, run_filter
from dpiqa.engine.filter.shard_copy import KEYS_DIR, ShardFilter, ShardResult, ShardTask, unsafe_name

__all__ = [
    "KEYS_DIR",
    "Cutoff",
    "FilterConfig",
    "FilterResult",
    "ShardFilter",
    "ShardResult",
    "ShardTask",
    "match_shards",
    "min_score_cutoff",
    "run_filter",
    "sortable",
    "top_fraction_cutoff",
    "unsafe_name",
    "unsortable",
]
