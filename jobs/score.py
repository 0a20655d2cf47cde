"""`dpiqa score`: WebDataset shards -> one Parquet of quality scores per shard, resumable."""

from __future__ import annotations

import argparse

from dpiqa.engine.schema import DEFAULT_MAX_PIXELS
from dpiqa.jobs.args import (
    add_address,
    add_executor,
    add_old_spelling,
    add_run_options,
    add_storage_options,
    location,
    nonnegative_int,
    positive_float,
    positive_int,
    print_failures,
    run_options,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "score",
        help="score WebDataset shards into Parquet (resumable)",
        description="Score every image of every shard with a DP-IQA model, a shard per unit of work: each "
        "shard is read, decoded, scored and written by one worker (a Ray actor on a cluster), which writes its "
        "Parquet file under OUT/scores/, then its completion marker under OUT/_done/; the run's manifest is "
        "OUT/manifest.json. A lost worker costs only the shards it held (they run again alone); rerunning the "
        "same command skips finished shards.",
    )
    p.add_argument(
        "--input",
        type=location,
        required=True,
        help="shards: brace pattern (s3://b/p/{00000..00099}.tar), glob, prefix/folder, or a text file of URLs",
    )
    p.add_argument("--output", type=location, required=True, help="output folder or URL (local, s3://, any fsspec URL)")
    p.add_argument(
        "--model",
        type=location,
        default="demo",
        help="checkpoint folder/URL/Hub id, shipped name (demo) or named config (default: demo)",
    )
    p.add_argument("--batch-size", type=positive_int, default=32, help="images per model call (default: 32)")
    add_run_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace results of another model/config at OUT")
    p.add_argument(
        "--write-maps", action="store_true", help="also write float16 quality maps to OUT/maps/ (for distill)"
    )
    p.add_argument(
        "--max-pixels",
        type=positive_int,
        default=DEFAULT_MAX_PIXELS,
        help=f"larger images become 'too_large' rows (default: {DEFAULT_MAX_PIXELS})",
    )
    p.add_argument(
        "--workers",
        dest="actors",
        type=positive_int,
        default=None,
        help="scoring workers (default: one per GPU, else 1)",
    )
    add_old_spelling(p, "--actors", "--workers", "actors", type=positive_int)
    p.add_argument(
        "--units-per-worker",
        type=positive_int,
        default=2,
        help="shards in flight on each worker: one is read and written while another scores (default: 2)",
    )
    p.add_argument(
        "--retries",
        type=nonnegative_int,
        default=3,
        help="runs again of a shard whose worker was lost or whose unit failed, before it is reported failed "
        "(default: 3)",
    )
    p.add_argument(
        "--hang-seconds",
        type=positive_float,
        default=900.0,
        help="a worker that scores nothing for this long with shards in flight is replaced and its shards run "
        "again (default: 900)",
    )
    p.add_argument(
        "--decode-on",
        choices=["auto", "cpu", "device"],
        default="auto",
        help="where JPEGs are decoded: auto (the GPU for a student on GPUs, else CPU), cpu, device",
    )
    add_address(p)
    add_executor(
        p,
        auto="Ray when a cluster is named (--address, RAY_ADDRESS), this process for a small input (up to 64 "
        "shards and 512 MB: a local Ray's start-up costs more than it saves), else a local Ray",
        ray="Ray actors (a local Ray unless a cluster is named)",
        local="this process, no Ray",
    )
    p.add_argument(
        "--skip-missing",
        action="store_true",
        help="when a brace pattern or list names shards that do not exist, score the ones that do "
        "(default: refuse the run, naming the missing ones)",
    )
    p.add_argument(
        "--compact",
        action="store_true",
        help="when every shard is done, merge the per-shard score files into large Parquet parts (what "
        "`dpiqa compact --scores OUT` does; rerunning either finishes the merge)",
    )
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.pipeline import ScoreConfig, run_score

    config = ScoreConfig(
        input=args.input,
        output=args.output,
        model=args.model,
        batch_size=args.batch_size,
        run=run_options(args),
        overwrite=args.overwrite,
        write_maps=args.write_maps,
        max_pixels=args.max_pixels,
        actors=args.actors,
        units_per_worker=args.units_per_worker,
        retries=args.retries,
        hang_seconds=args.hang_seconds,
        decode_on=args.decode_on,
        skip_missing=args.skip_missing,
        storage_options=args.storage_options,
    )
    result = run_score(config, args.executor, args.address)
    print(result.summary_line("scored"))
    status = print_failures(result)
    if args.compact:
        if result.failed:
            # A part is sorted by shard and closed for good: compacting now would leave the failed shards, once
            # rerun, in parts of their own. Say it and let the rerun (with --compact) do it.
            print(f"not compacted: {len(result.failed)} shard(s) failed; rerun the same command to finish and compact")
        else:
            from dpiqa.engine.compact import CompactConfig, compact, summary_line

            compacted = compact(CompactConfig(scores=args.output, storage_options=args.storage_options))
            print(summary_line(compacted, args.output))
    return status
