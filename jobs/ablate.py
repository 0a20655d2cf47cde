"""`dpiqa ablate`: train variants of the teacher (switches) or the student (loss) and tabulate them."""

from __future__ import annotations

import argparse

from dpiqa.jobs import training
from dpiqa.jobs.args import location
from dpiqa.storage import join


def add_parser(sub: argparse._SubParsersAction) -> None:
    from dpiqa.engine.ablate import STUDENT_VARIANTS, TEACHER_VARIANTS

    p = sub.add_parser(
        "ablate",
        help="train ablation variants over seeded splits and tabulate SRCC/PLCC",
        description="Each variant is trained with the same Ray Train job, data, splits and protocol into "
        "OUTPUT/VARIANT/; OUTPUT/ablation.md and ablation.json hold the table (median over splits "
        "with min and max, parameter counts).",
        epilog=f"teacher variants: {', '.join(TEACHER_VARIANTS)}. student variants: {', '.join(STUDENT_VARIANTS)}.",
    )
    p.add_argument("--kind", choices=["teacher", "student"], default="teacher")
    p.add_argument("--variants", default=None, help="comma-separated variant names (default: all of --kind)")
    p.add_argument("--teacher", type=location, default=None, help="student: the teacher checkpoint to distill from")
    training.add_common(p, teacher=True, student=True)
    p.set_defaults(run=main)


def main(args: argparse.Namespace) -> int:
    from dpiqa.engine.ablate import run_ablation, variants_for, write_table

    config = training.config_from_args(
        args, "ablate-" + args.kind, training.model_spec(args, args.kind), teacher=args.teacher
    )
    names = args.variants.split(",") if args.variants else list(variants_for(args.kind))
    rows = run_ablation(config, names, address=args.address)
    title = f"{args.kind} ablation on {args.dataset} ({args.splits} seeded splits)"
    write_table(rows, args.output, title, args.storage_options)
    for r in rows:
        s = r.summary.get("srcc")
        print(f"{r.variant}: SRCC {s['median']:.4f} [{s['min']:.4f}, {s['max']:.4f}]" if s else f"{r.variant}: -")
    print(f"table -> {join(args.output, 'ablation.md')}")
    return 0
