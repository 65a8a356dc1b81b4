"""Report settings: the run config's ``report`` section, overridable on the command line.

``report:`` keys (all optional)::

    report:
      gallery_count: 3           # worst and best cases shown per ranking
      alpha: 0.05                # significance level of the McNemar verdicts
      centre_cluster_ratio: 0.5  # predicted centres count as "clustered near the image centre"
                                 # when their mean distance from it is below this fraction of
                                 # the true centres' mean distance
      figures: true              # embed figures (false: tables only, faster)
      dpi: 80                    # resolution of the embedded figures
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

__all__ = ["ReportOptions"]


@dataclass(frozen=True)
class ReportOptions:
    """How the report is built.

    Attributes:
        gallery_count: worst and best cases shown per ranking (CNN WT Dice, VLM box Dice), >= 0.
        alpha: significance level for the McNemar verdicts, in (0, 1).
        centre_cluster_ratio: threshold of the "clustered near the centre" verdict, > 0.
        figures: whether to draw and embed figures.
        markdown: whether to write ``metrics/*.md`` too.
        dpi: figure resolution (30-300).
        output: the HTML file (default ``RUN/report.html``).

    Raises:
        ValueError: for a value out of range, naming the setting.
    """

    gallery_count: int = 3
    alpha: float = 0.05
    centre_cluster_ratio: float = 0.5
    figures: bool = True
    markdown: bool = True
    dpi: int = 80
    output: Path | None = None

    def __post_init__(self):
        if int(self.gallery_count) != self.gallery_count or self.gallery_count < 0:
            raise ValueError(
                f"report.gallery_count must be an integer >= 0, got {self.gallery_count}"
            )
        if not (0.0 < float(self.alpha) < 1.0):
            raise ValueError(f"report.alpha must be in (0, 1), got {self.alpha}")
        ratio = float(self.centre_cluster_ratio)
        if not (math.isfinite(ratio) and ratio > 0):
            raise ValueError(f"report.centre_cluster_ratio must be > 0, got {ratio}")
        if not 30 <= int(self.dpi) <= 300:
            raise ValueError(f"report.dpi must be in 30..300, got {self.dpi}")
        object.__setattr__(self, "gallery_count", int(self.gallery_count))
        object.__setattr__(self, "dpi", int(self.dpi))
        if self.output is not None:
            object.__setattr__(self, "output", Path(self.output))

    @classmethod
    def from_config(
        cls, section: Mapping[str, Any] | None, **overrides: Any
    ) -> tuple[ReportOptions, list[str]]:
        """Options from a run config's ``report`` section, then ``overrides`` (None = unset).

        Returns:
            ``(options, problems)``: unknown keys are reported in ``problems`` (a finished run's
            report should not fail over a typo), not raised.

        Raises:
            ValueError: for a known key with a bad value.
        """
        known = {f.name for f in fields(cls)} - {"output", "markdown"}
        problems = []
        values: dict[str, Any] = {}
        for key, value in dict(section or {}).items():
            if key in known:
                values[key] = value
            else:
                problems.append(
                    f"config report.{key} is not a report setting (known: {', '.join(sorted(known))})"
                )
        options = cls(**values)
        given = {k: v for k, v in overrides.items() if v is not None}
        return (replace(options, **given) if given else options), problems
