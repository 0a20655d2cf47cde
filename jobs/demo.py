"""`dpiqa demo`: the main job on its embedded default: a local corpus, a local Ray, the shipped checkpoint."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dpiqa.jobs.args import add_address, add_executor, location


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="build the demo corpus, score it on a local Ray with the shipped model, audit it",
        description="Builds WebDataset shards from the photographs that scikit-image, scikit-learn and matplotlib "
        "ship, each with graded distortions (blur, noise, JPEG, JPEG 2000, contrast, exposure, motion blur; 5 "
        "levels); scores them with `dpiqa score` on a local Ray; audits the result with `dpiqa audit`; "
        "and prints how well the scores rank each distortion by strength.",
    )
    p.add_argument(
        "--output",
        type=location,
        default="demo-out",
        help="folder for the corpus, scores and report (default demo-out)",
    )
    p.add_argument(
        "--model", type=location, default="demo", help="model to score with (default: the shipped demo checkpoint)"
    )
    add_executor(
        p,
        auto="as `dpiqa score` chooses",
        ray="the engine on a local Ray (the embedded default shows the engine users run)",
        local="this process",
        default="ray",
    )
    add_address(p)
    p.add_argument("--overwrite", action="store_true", help="replace earlier scores of another model")
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.audit import AuditConfig, run_audit
    from dpiqa.engine.demo import build_corpus, ranking_of_scores
    from dpiqa.engine.pipeline import ScoreConfig, run_score

    out = Path(args.output).resolve()
    shards = build_corpus(out / "corpus")
    scores = out / "scores"
    result = run_score(
        ScoreConfig(input=str(out / "corpus"), output=str(scores), model=args.model, overwrite=args.overwrite),
        args.executor,
        args.address,
    )
    audit = run_audit(AuditConfig(scores=str(scores), report=str(out / "report.html"), json=str(out / "audit.json")))
    ranking = ranking_of_scores(str(scores))
    (out / "ranking.json").write_text(json.dumps(ranking, indent=2))

    doc = audit.doc
    print(
        f"\ndpiqa demo: {len(shards)} shards, {result.manifest['rows']} images scored with {args.model!r} "
        f"({doc['summary']['error_rate']:.1%} errors)\n"
    )
    print("| distortion | SRCC(level, score) | mean score at level 0 / 1 / 3 / 5 |")
    print("| --- | ---: | --- |")
    for kind, r in ranking["per_distortion"].items():
        m = r["mean_score_by_level"]
        print(
            f"| {kind} | {r['srcc_level_vs_score']:+.3f} | "
            + " / ".join(f"{m[str(lv)]:.2f}" for lv in (0, 1, 3, 5) if str(lv) in m)
            + " |"
        )
    if ranking["overall_srcc"] is not None:
        print(
            f"\noverall SRCC between distortion level and score: {ranking['overall_srcc']:+.3f} "
            "(-1: every photograph's distortions ranked by strength)"
        )
    print(
        f"\ncorpus  {out / 'corpus'}\nscores  {scores}  (Parquet, one file per shard)\nreport  {out / 'report.html'}"
        f"\naudit   {out / 'audit.json'}\nranking {out / 'ranking.json'}"
    )
    return result.exit_code or audit.exit_code
