"""`dpiqa filter`: scores + a threshold or top fraction -> new WebDataset shards of the kept samples."""

from __future__ import annotations

import argparse

from dpiqa.jobs.args import (
    add_address,
    add_executor,
    add_storage_options,
    finite_float,
    fraction,
    location,
    positive_int,
    print_failures,
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "filter",
        help="write new shards holding only the samples whose score passes (resumable)",
        description="Keep the samples of a scored run whose status is ok and whose score is >= --min-score, or "
        "the --top-fraction highest scored. Writes OUT/NAME.tar per input shard (members copied byte "
        "for byte), OUT/keys/NAME.parquet (shard, key, index, score of the kept samples) and a "
        "completion marker OUT/_done/NAME.json. Rerunning the same command skips finished shards. "
        "Samples whose member names could escape an extraction folder are refused and counted.",
    )
    p.add_argument("--scores", type=location, required=True, help="output location of the `dpiqa score` run")
    p.add_argument(
        "--input",
        type=location,
        required=True,
        help="the scored shards: brace pattern, glob, prefix/folder, or a text file of URLs",
    )
    p.add_argument(
        "--output", type=location, required=True, help="folder or URL for the new shards (local, s3://, any fsspec URL)"
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument(
        "--min-score", type=finite_float, default=None, metavar="X", help="keep ok samples with score >= X"
    )
    mode.add_argument(
        "--top-fraction",
        type=fraction,
        default=None,
        metavar="F",
        help="keep the ceil(F*N) highest scored of the N ok samples (ties by shard name, index)",
    )
    p.add_argument("--keys-only", action="store_true", help="write only the kept keys (OUT/keys/), no shards")
    p.add_argument("--overwrite", action="store_true", help="replace another filter's results at OUT")
    add_executor(
        p,
        auto="Ray when a cluster is named, a thread pool in this process for up to 64 shards and 512 MB, "
        "else a local Ray",
        ray="Ray actors, one shard per unit (--workers actors)",
        local="a thread pool of --workers in this process",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=4,
        help="shards at once in this process, or Ray actors on Ray (default: 4)",
    )
    add_address(p)
    add_storage_options(p)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.filter import FilterConfig, run_filter

    config = FilterConfig(
        scores=args.scores,
        input=args.input,
        output=args.output,
        min_score=args.min_score,
        top_fraction=args.top_fraction,
        keys_only=args.keys_only,
        overwrite=args.overwrite,
        workers=args.workers,
        storage_options=args.storage_options,
    )
    result = run_filter(config, executor=args.executor, address=args.address)
    m = result.manifest
    cut = "no ok row" if m["cutoff"]["score"] is None else f"cut at score {m['cutoff']['score']:.6g}"
    print(
        f"kept {m['kept']:,} samples ({cut}), refused {m['refused']:,}, from "
        f"{m['shards']['written']} shards ({m['shards']['skipped_done']} already done, {m['shards']['failed']} "
        f"failed) -> {args.output}"
    )
    return print_failures(result)
