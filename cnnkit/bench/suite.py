"""The suite as one run: the sections in order, their tables, one report (``cnnkit bench``)."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable

from .cases import (
    CIFAR_BATCH,
    CIFAR_CASE,
    LAYER_CASES,
    NET_CASES,
    TWIN_TOLERANCE,
    run_layer_case,
    run_net_case,
    run_train,
)
from .errors import BenchError
from .memory import CIFAR, MemoryRow, format_memory, run_child
from .table import Row, format_table
from .timing import machine, progress

SECTIONS = ("layers", "nets", "train", "memory")


@dataclass
class Settings:
    """What to run and how long to try: threads for both sides, torch or not, repeats."""

    threads: int
    compare: bool
    repeat: int = 5                 # layer cases: at least this many calls per cell ...
    min_seconds: float = 0.5        # ... and at least this long
    net_repeat: int = 3             # whole networks: calls per cell (each one long)
    steps: int = 20                 # the train step: timed steps per side (median)
    rounds: int = 2                 # alternating blocks per side (each side keeps its best)
    batch: int | None = None        # overrides every case's batch
    size: int | None = None         # overrides the nets' 224
    cases: str = ""                 # substring filter on case names (layers, nets, memory)
    peak_n: int = 2048              # the sgemm product measuring the peak

    @classmethod
    def quick(cls, threads: int, compare: bool, **changes: Any) -> "Settings":
        """Fewer calls: a first look, not figures to quote."""
        base: dict[str, Any] = dict(repeat=2, min_seconds=0.1, net_repeat=1, steps=5, peak_n=1024, rounds=1)
        base.update(changes)
        return cls(threads, compare, **base)


@dataclass
class Report:
    """Everything a run measured; ``as_dict`` is the --json file."""

    machine: Any
    rows: list[Row] = field(default_factory=list)
    memory: list[MemoryRow] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)   # the command's options, as given

    def as_dict(self) -> dict[str, Any]:
        peak = self.machine.sgemm_gflops
        return dict(machine=self.machine.as_dict(), options=self.options,
                    rows=[r.as_dict(peak) for r in self.rows], memory=[m.as_dict() for m in self.memory])


def _selected(names: list[str], pattern: str) -> list[int]:
    return [i for i, n in enumerate(names) if pattern.lower() in n.lower()]


def check_sections(names: list[str]) -> list[str]:
    """The sections to run, in the suite's order ('all': every one); unknown ones refused."""
    out: list[str] = []
    for name in names:
        if name == "all":
            out += list(SECTIONS)
        elif name in SECTIONS:
            out.append(name)
        else:
            raise BenchError(f"unknown section {name!r}; expected one of {', '.join(SECTIONS)}, all or profile")
    return [s for s in SECTIONS if s in out]


def run(sections: list[str], settings: Settings, print_fn: Callable[[str], None] = print,
        options: dict[str, Any] | None = None) -> Report:
    """Run the sections, printing each one's table as it finishes; the whole report back."""
    sections = check_sections(sections)
    layer_cases = [LAYER_CASES[i] for i in _selected([c.name for c in LAYER_CASES], settings.cases)]
    net_cases = [NET_CASES[i] for i in _selected([c.name for c in NET_CASES], settings.cases)]
    cifar_selected = bool(_selected([CIFAR_CASE], settings.cases))
    wanted = {"layers": layer_cases, "nets": net_cases, "train": [1] if cifar_selected else [],
              "memory": net_cases + ([1] if cifar_selected else [])}
    if settings.cases and not any(wanted[s] for s in sections):
        raise BenchError(f"--cases {settings.cases!r} matches no case of {', '.join(sections)}")
    for name, value in (("--batch", settings.batch), ("--size", settings.size)):
        if value is not None and value < 1:
            raise BenchError(f"{name}: expected an int >= 1, got {value}")
    if settings.size is not None and settings.size < 32:
        raise BenchError(f"--size {settings.size}: the zoo's ImageNet nets need at least 32x32 inputs")

    progress(f"measuring the sgemm peak ({settings.peak_n}^3, {settings.threads} threads)")
    report = Report(machine(settings.threads, settings.compare, settings.peak_n), options=dict(options or {}))
    print_fn(report.machine.header())
    peak = report.machine.sgemm_gflops
    if "layers" in sections and layer_cases:
        rows = []
        for case in layer_cases:
            progress(f"layers: {case.name}")
            rows += run_layer_case(case, settings.repeat, settings.min_seconds, settings.compare, settings.batch,
                                   settings.rounds)
        print_fn("\n" + format_table(rows, peak, settings.compare))
        report.rows += rows
    if "nets" in sections and net_cases:
        rows = []
        for net_case in net_cases:
            progress(f"nets: {net_case.name}")
            rows += run_net_case(net_case, settings.net_repeat, 0.0, settings.compare, settings.batch, settings.size,
                                 settings.rounds)
        print_fn("\n" + format_table(rows, peak, settings.compare))
        for r in rows[::2]:
            if "twin_diff" in r.notes:
                verdict = "same function" if r.notes["twin_ok"] else f"MISMATCH (over {TWIN_TOLERANCE:g})"
                print_fn(f"check {r.case}: max |cnnkit - torch| / max |torch| = {r.notes['twin_diff']:.1e} "
                         f"({verdict})")
        report.rows += rows
    if "train" in sections and cifar_selected:
        progress("train: the CIFAR-10 net's SGD step")
        result = run_train(settings.batch or CIFAR_BATCH, settings.steps, settings.compare, settings.rounds)
        row = result.row()
        print_fn("\n" + format_table([row], peak, settings.compare))
        loss = f"first loss cnnkit {result.cnnkit_loss:.5f}"
        if result.torch_loss is not None:
            loss += f" vs torch {result.torch_loss:.5f}"
        print_fn(f"median of {result.steps} steps; {loss}")
        report.rows.append(row)
    if "memory" in sections and wanted["memory"]:
        jobs = ([(CIFAR_CASE, CIFAR, settings.batch or CIFAR_BATCH, 32)] if cifar_selected else [])
        jobs += [(c.name if (settings.size or c.size) == 224 else f"{c.name} @{settings.size}", c.model,
                  settings.batch or c.batch, settings.size or c.size) for c in net_cases]
        for name, model, batch, size in jobs:
            progress(f"memory: {name} (fresh processes)")
            ours = run_child("cnnkit", model, batch, size, settings.threads)
            theirs = run_child("torch", model, batch, size, settings.threads) if settings.compare else None
            report.memory.append(MemoryRow(name, batch, ours, theirs))
        print_fn("\nMB of resident memory (setup: weights and batch; step: a step's peak over setup); "
                 "tracemalloc: cnnkit's arrays at the step's worst moment")
        print_fn(format_memory(report.memory))
    sys.stdout.flush()
    return report
