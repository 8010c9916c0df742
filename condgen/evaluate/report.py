r"""The report of :func:`~condgen.evaluate.compare`: a table per method, with the spread over
seeds, as text, Markdown, CSV, plots and ArviZ files."""

from __future__ import annotations

__all__ = ["Report", "summarise_runs"]

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from ..posterior import Posterior
from .scoring import site_moment_errors

_FORMATS = {
    "time_s": "{:.2f}",
    "nfe": "{:.0f}",
    "mean_err": "{:.3f}",
    "sd_ratio": "{:.3f}",
    "sw": "{:.4f}",
    "energy": "{:.4f}",
    "mmd": "{:.4f}",
    "c2st": "{:.3f}",
    "ess": "{:.0f}",
    "rhat": "{:.3f}",
    "warnings": "{:.0f}",
}


class Report:
    r"""The result of :func:`~condgen.evaluate.compare`: one row per method, with the spread
    over seeds.

    Attributes:
        table: A :class:`pandas.DataFrame`, one row per method: ``method``, ``family``,
            ``seeds`` (runs that succeeded), ``time_s``, ``nfe``, the metrics (means over
            seeds) and, with several seeds, their standard deviations as ``<metric>_sd``;
            ``error`` holds the error of a method that failed (NaN metrics), or is empty.
        runs: A :class:`pandas.DataFrame`, one row per method and seed.
        posteriors: The posterior of each method's first successful seed, by label.
        reference: The reference draws by site (None without a reference).
        reference_label: What the reference is, e.g. ``"exact draws"`` or ``"nuts, run long
            (approximate)"``.
        title: A title printed above the table.
    """

    def __init__(
        self,
        table: pd.DataFrame,
        runs: pd.DataFrame,
        posteriors: dict[str, Posterior],
        reference: Mapping[str, Tensor] | None = None,
        reference_label: str = "",
        title: str = "",
    ):
        self.table, self.runs, self.posteriors = table, runs, posteriors
        self.reference, self.reference_label, self.title = reference, reference_label, title

    def _cells(self) -> tuple[list[str], list[list[str]]]:
        columns = ["method", "family"] + [c for c in _FORMATS if c in self.table.columns]
        several = self.table["seeds"].max() > 1 if len(self.table) else False
        if several:
            columns.insert(2, "seeds")
        errors = self.table["error"].fillna("").astype(str) if "error" in self.table else None
        if errors is not None and errors.str.len().any():
            columns.append("error")
        rows = []
        for _, row in self.table.iterrows():
            cells = []
            for c in columns:
                if c in _FORMATS:
                    cell = _format(c, row[c])
                    spread = row.get(f"{c}_sd", math.nan)
                    if several and isinstance(spread, float) and math.isfinite(spread):
                        cell += " ± " + _format(c, spread)
                    cells.append(cell)
                else:
                    cells.append(_shorten(str(row[c]) if row[c] == row[c] else ""))
            rows.append(cells)
        return columns, rows

    def _header(self) -> list[str]:
        lines = [self.title] if self.title else []
        if self.reference_label:
            lines.append(f"reference: {self.reference_label}")
        return lines

    def to_markdown(self) -> str:
        r"""The table as a Markdown (GitHub) table, with ``mean ± sd`` over seeds."""
        columns, rows = self._cells()
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in r) + " |" for r in rows]
        return "\n".join(lines)

    def to_csv(self, path: str | Path | None = None) -> str | None:
        r"""The table as CSV (full precision, spreads in ``<metric>_sd`` columns): written to
        ``path`` if given, else returned."""
        return self.table.to_csv(path, index=False)

    def moment_errors(self) -> pd.DataFrame:
        r"""Per-coordinate moment errors of each method's posterior against the reference:
        one row per method and coordinate, with the standardised mean error ``mean_err`` and
        the standard deviation ratio ``sd_ratio`` (see
        :func:`~condgen.evaluate.moment_errors`)."""
        if self.reference is None:
            raise ValueError("the report has no reference")
        rows = []
        for label, posterior in self.posteriors.items():
            names = list(posterior.problem.latent_sites)
            errors, ratios = site_moment_errors(posterior, self.reference, names)
            coordinates = [
                f"{name}[{i}]" if value[0].numel() > 1 else name
                for name in names
                for value in [self.reference[name]]
                for i in range(value[0].numel())
            ]
            rows += [
                {"method": label, "coordinate": c, "mean_err": float(e), "sd_ratio": float(r)}
                for c, e, r in zip(coordinates, errors, ratios, strict=True)
            ]
        return pd.DataFrame(rows)

    def plot(self, site: str | None = None, dims: tuple[int, int] = (0, 1), **options: Any):
        r"""Draws of each method beside the reference (see
        :func:`~condgen.evaluate.plots.plot_draws`); ``site`` defaults to the first latent
        site. Returns a matplotlib figure."""
        from .plots import plot_draws

        if self.reference is None:
            raise ValueError("the report has no reference to plot the draws against")
        site = site or next(iter(self.reference))
        return plot_draws(
            self.posteriors, self.reference[site], site, dims=dims, title=self.title, **options
        )

    def save(self, directory: str | Path, plot: bool = True) -> list[Path]:
        r"""Writes ``table.md``, ``table.csv``, ``runs.csv``, ``draws.png`` (with a reference
        and ``plot``) and one ArviZ netCDF file per method (``<label>.nc``) to ``directory``.

        Returns:
            The paths written.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = [directory / "table.md", directory / "table.csv", directory / "runs.csv"]
        written[0].write_text("\n\n".join([*self._header(), self.to_markdown()]) + "\n")
        self.to_csv(written[1])
        self.runs.drop(columns=["traceback"], errors="ignore").to_csv(written[2], index=False)
        if plot and self.reference is not None and self.posteriors:
            import matplotlib.pyplot as plt

            figure = self.plot()
            figure.savefig(directory / "draws.png", dpi=120)
            plt.close(figure)
            written.append(directory / "draws.png")
        for label, posterior in self.posteriors.items():
            path = directory / f"{_file_name(label)}.nc"
            posterior.to_arviz().to_netcdf(str(path))
            written.append(path)
        return written

    def __str__(self) -> str:
        columns, rows = self._cells()
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in rows]
        return "\n".join(self._header() + lines)

    def __repr__(self) -> str:
        return f"Report({list(self.table['method'])})"


def _format(column: str, value: Any) -> str:
    if isinstance(value, float) and not math.isfinite(value):
        return "-"
    return _FORMATS[column].format(value)


def _shorten(text: str, width: int = 70) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _file_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in label).strip("_")


def summarise_runs(runs: pd.DataFrame, labels: list[str]) -> pd.DataFrame:
    r"""The table of a :class:`Report` from its runs: per label, the runs that succeeded, the
    means of the numeric columns over them and their standard deviations (``<column>_sd``),
    and the error of failed runs."""
    numeric = [c for c in _FORMATS if c in runs.columns]
    rows = []
    for label in labels:
        group = runs[runs["method"] == label]
        failed = group["error"].notna() if "error" in group else pd.Series(False, group.index)
        ok = group[~failed]
        row: dict[str, Any] = {
            "method": label,
            "family": group["family"].iloc[0],
            "seeds": len(ok),
        }
        for c in numeric:
            row[c] = float(ok[c].mean()) if len(ok) else math.nan
            row[f"{c}_sd"] = float(ok[c].std()) if len(ok) > 1 else math.nan
        errors = group.loc[failed, "error"] if failed.any() else []
        row["error"] = (
            ""
            if not len(errors)
            else errors.iloc[0]
            if len(errors) == len(group)
            else f"{len(errors)}/{len(group)} seeds failed: {errors.iloc[0]}"
        )
        rows.append(row)
    return pd.DataFrame(rows)
