"""The performance budget (issue 21): each figure next to its target and its reference.

A budget line reads

    <figure>  <measured>  <target>  pass|FAIL  [<measured / reference>x of] <reference>

The gateway's figures come from `bench.run`'s scenario table; the auditors' tools' figures
from `bench.auditors.run`, whose rows are matched by what their names start with (a row of a
kind not listed here is printed, without a budget line).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

# The hot path, one worker, fsync on, every 0.3 feature as deployed.
RPS_AT_32 = 3500.0
P99_AT_32_MS = 25.0
ADDED_P50_AT_1_MS = 0.7
RSS_MIB = 60.0
READY_S = 1.0

# The auditors' tools, against `sha256sum` of the same file (its row is the reference).
REFERENCE_ROW = "sha256sum"
VERIFY_RATIO = 2.5
QUERY_RATIO = 3.0
PROVE_SECONDS = 0.05


@dataclass(frozen=True)
class Line:
    figure: str
    measured: float | None
    unit: str
    target: float
    at_least: bool  # the target is a floor (throughput), else a ceiling
    reference: str  # what the figure is read against, in words
    reference_value: float | None = None  # for the ratio, in the figure's unit

    @property
    def passed(self) -> bool:
        if self.measured is None:
            return False
        return self.measured >= self.target if self.at_least else self.measured <= self.target

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "passed": self.passed, "ratio": self.ratio}

    @property
    def ratio(self) -> float | None:
        if self.measured is None or not self.reference_value:
            return None
        return self.measured / self.reference_value


def number(value: float | None, unit: str, *, target: bool = False) -> str:
    if value is None:
        return "-"
    if target:  # as given: 3,500/s, 25 ms, 0.7 ms, 2.5x
        return f"{value:,g}{'' if unit in ('/s', 'x') else ' '}{unit}"
    if unit == "/s":
        return f"{value:,.0f}/s"
    if unit == "x":
        return f"{value:.2f}x"
    digits = 3 if unit == "ms" and value < 10 else 2 if unit in ("s", "ms") else 1
    return f"{value:,.{digits}f} {unit}"


def render(lines: list[Line]) -> list[str]:
    """Aligned text under a header, one row per line: the reference last, as it may be long."""
    width = max([len(line.figure) for line in lines] + [len("figure")])
    out = [f"  {'figure':<{width}}  {'measured':>11}  {'target':<13}  result  reference"]
    for line in lines:
        target = (">= " if line.at_least else "<= ") + number(line.target, line.unit,
                                                               target=True)
        reference = line.reference
        if line.ratio is not None:
            reference = f"{line.ratio:.2f}x of {reference}"
        out.append(f"  {line.figure:<{width}}  {number(line.measured, line.unit):>11}  "
                   f"{target:<13}  {'pass' if line.passed else 'FAIL':<6}  {reference}")
    return out


def auditor_lines(results: dict[str, dict[str, float]]) -> list[Line]:
    """A line for each row of a known kind: `audit verify` and `audit query` against the
    reference row's seconds, an `audit prove` from a proof index (its name holds "with the
    index") against 50 ms. Missing rows give no line; a failed tool (non-zero exit) fails its
    line."""
    reference_name = next((n for n in results if n.startswith(REFERENCE_ROW)), None)
    base = results[reference_name]["seconds"] if reference_name else None
    lines = []
    for name, row in results.items():
        seconds = row["seconds"] if not row.get("exit") else None
        if name.startswith(("audit verify", "audit query")) and base \
                and "general way" not in name:  # the budget is the files' one pass
            limit = VERIFY_RATIO if name.startswith("audit verify") else QUERY_RATIO
            ratio = None if seconds is None else row.get("ratio") or seconds / base
            lines.append(Line(name, ratio, "x", limit, False,
                              f"{number(seconds, 's')} against sha256sum's {base:.2f} s"))
        elif name.startswith("audit prove") and "with the index" in name:
            lines.append(Line(name, None if seconds is None else seconds * 1000, "ms",
                              PROVE_SECONDS * 1000, False,
                              f"sha256sum's {base:.2f} s" if base else "-",
                              None if base is None else base * 1000))
    return lines


def auditor_table(results: dict[str, dict[str, float]]) -> list[str]:
    """Every row `bench.auditors.run` returned, whatever its name."""
    width = max([len(name) for name in results] + [len("tool")])
    out = [f"  {'tool':<{width}}  {'seconds':>8}  {'x sha256sum':>11}  {'peak RSS':>9}"]
    for name, row in results.items():
        failed = f"  (exit {row['exit']:.0f})" if row.get("exit") else ""
        out.append(f"  {name:<{width}}  {row['seconds']:>8.2f}  {row['ratio']:>10.2f}x  "
                   f"{row['peak_rss_mib']:>5.0f} MiB{failed}")
    return out
