"""``gliomacompare report RUN``: rebuild the report of a run folder without recomputing."""

from __future__ import annotations

import argparse

from GliomaCompareLib.argtypes import add_quiet_option, non_negative_int
from GliomaCompareLib.report.build import build_report

__all__ = ["register"]

_EPILOG = """\
Reads RUN/manifest.json, RUN/metrics/*.csv and RUN/cases/<case_id>/gallery.npz; recomputes no
model output. Writes RUN/report.html (one self-contained file: tables, figures as embedded PNG,
gallery, what was run) and the Markdown tables RUN/metrics/<table>.md and metrics/summary.md.
Parts of a run that have not run yet are shown as "not run".

Defaults come from the run config's `report` section (gallery_count, alpha,
centre_cluster_ratio, figures, dpi); the options below override them.
"""


def register(sub) -> None:
    p = sub.add_parser(
        "report",
        help="rebuild report.html and the Markdown tables of a run folder (no recomputation)",
        description=(
            "Rebuild the comparison report of a finished (or partly finished) run folder from "
            "its files, recomputing nothing."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("run", metavar="RUN", help="the run folder (gliomacompare run ... --out RUN)")
    p.add_argument(
        "-o",
        "--out",
        metavar="FILE.html",
        default=None,
        help="HTML file to write (default RUN/report.html)",
    )
    p.add_argument(
        "--gallery-count",
        type=non_negative_int,
        default=None,
        metavar="N",
        help="worst and best cases shown per ranking (default: config, else 3; 0 = no gallery)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=None,
        help="significance level of the McNemar verdicts (default: config, else 0.05)",
    )
    p.add_argument("--no-figures", action="store_true", help="tables only (no matplotlib; fastest)")
    p.add_argument("--no-markdown", action="store_true", help="do not write metrics/*.md")
    add_quiet_option(p, "no warnings (only errors and the report's path)")
    p.set_defaults(func=_report)


def _report(args) -> int:
    path = build_report(
        args.run,
        gallery_count=args.gallery_count,
        alpha=args.alpha,
        figures=False if args.no_figures else None,
        markdown=False if args.no_markdown else None,
        output=args.out,
    )
    print(f"report: {path}")
    return 0
