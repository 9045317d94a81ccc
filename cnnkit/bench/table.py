"""The suite's table: one row per case and pass, ms, GFLOP/s, % of the sgemm peak, cnnkit / PyTorch.

GFLOP/s is the row's multiply-add count (2 flops each, CONV and FC layers only, as
convnet-benchmarks counts) over its time; %peak divides that by the machine's measured
sgemm rate on the same threads; ratio is cnnkit's time over PyTorch's (below 1.0:
cnnkit is faster).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable

from ..files import atomic_file
from .errors import BenchError


@dataclass
class Row:
    """One measured case and pass: seconds on each side (torch None when not compared)."""

    section: str                 # 'layers', 'nets', 'train'
    case: str
    pass_: str                   # 'fwd', 'fwd+bwd', 'step'
    batch: int
    flops: int                   # of one call
    cnnkit_s: float
    torch_s: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)   # e.g. the twin check, first losses

    def gflops(self, seconds: float | None = None) -> float | None:
        s = self.cnnkit_s if seconds is None else seconds
        return self.flops / s / 1e9 if self.flops and s > 0 else None

    def pct_peak(self, peak_gflops: float, seconds: float | None = None) -> float | None:
        g = self.gflops(seconds)
        return 100 * g / peak_gflops if g is not None and peak_gflops > 0 else None

    @property
    def ratio(self) -> float | None:
        """cnnkit's time / PyTorch's."""
        return self.cnnkit_s / self.torch_s if self.torch_s else None

    def as_dict(self, peak_gflops: float) -> dict[str, Any]:
        torch_s = self.torch_s
        return dict(section=self.section, case=self.case, **{"pass": self.pass_}, batch=self.batch,
                    flops=self.flops, cnnkit_ms=1e3 * self.cnnkit_s,
                    torch_ms=None if torch_s is None else 1e3 * torch_s,
                    cnnkit_gflops=self.gflops(), cnnkit_pct_peak=self.pct_peak(peak_gflops),
                    torch_gflops=None if torch_s is None else self.gflops(torch_s),
                    torch_pct_peak=None if torch_s is None else self.pct_peak(peak_gflops, torch_s),
                    ratio=self.ratio, notes=self.notes)


def _cell(value: float | None, width: int, digits: int) -> str:
    return f"{'-':>{width}}" if value is None else f"{value:>{width}.{digits}f}"


def format_table(rows: Iterable[Row], peak_gflops: float, compare: bool) -> str:
    """The rows as a fixed-width table: case, pass, batch, then per side ms, GFLOP/s and
    %peak, and the ratio (the torch columns only when compared)."""
    rows = list(rows)
    width = max([len(r.case) for r in rows] + [20])
    head = f"{'case':<{width}} {'pass':<8} {'batch':>5} {'cnnkit ms':>10} {'GFLOP/s':>8} {'%peak':>6}"
    if compare:
        head += f" {'torch ms':>10} {'GFLOP/s':>8} {'%peak':>6} {'ratio':>6}"
    lines = [head]
    for r in rows:
        line = (f"{r.case:<{width}} {r.pass_:<8} {r.batch:>5} {1e3 * r.cnnkit_s:>10.2f} {_cell(r.gflops(), 8, 1)} "
                f"{_cell(r.pct_peak(peak_gflops), 6, 1)}")
        if compare:
            t = r.torch_s
            line += (f" {_cell(None if t is None else 1e3 * t, 10, 2)} {_cell(None if t is None else r.gflops(t), 8, 1)}"
                     f" {_cell(None if t is None else r.pct_peak(peak_gflops, t), 6, 1)} {_cell(r.ratio, 6, 2)}")
        lines.append(line)
    return "\n".join(lines)


def write_json(path: str | os.PathLike, report: dict[str, Any]) -> None:
    """The report as JSON at path, atomically (a temp file beside it, then os.replace)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BenchError(f"--json {path}: the folder {folder} does not exist")
    with atomic_file(path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
