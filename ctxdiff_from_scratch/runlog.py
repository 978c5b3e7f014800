"""Training logs: one CSV row per logged step, and a loss-curve PNG drawn from that CSV."""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Sequence


class CSVLogger:
    """Append rows of named numbers to ``path``; the header is written once, from the first row's keys.

    ``resume=True`` keeps an existing file (a resumed run continues its log) instead of starting a new one.
    """

    def __init__(self, path: str | Path, resume: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fields: list[str] | None = None
        if resume and self.path.is_file():
            with self.path.open() as f:
                header = f.readline().strip()
            self._fields = header.split(",") if header else None
        else:
            self.path.write_text("")

    def log(self, **row: float) -> None:
        if self._fields is None:
            self._fields = list(row)
            with self.path.open("a", newline="") as f:
                csv.writer(f).writerow(self._fields)
        missing = set(self._fields) - set(row)
        if missing or set(row) - set(self._fields):
            raise ValueError(f"log row keys {sorted(row)} differ from the CSV header {self._fields}.")
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([row[k] for k in self._fields])


def read_log(path: str | Path) -> dict[str, list[float]]:
    """Read a :class:`CSVLogger` file into ``{column: [values]}``."""
    with Path(path).open() as f:
        rows = list(csv.DictReader(f))
    return {key: [float(r[key]) for r in rows] for key in (rows[0] if rows else {})}


def plot_loss_curve(csv_path: str | Path, png_path: str | Path, keys: Sequence[str] = ("loss",),
                    x_key: str = "step", title: str = "training loss", log_y: bool = True) -> Path:
    """Draw ``keys`` against ``x_key`` from a training CSV and save the figure to ``png_path``."""
    from matplotlib.figure import Figure  # no pyplot: works headless and leaves a notebook's backend alone

    columns = read_log(csv_path)
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    for key in keys:
        ax.plot(columns[x_key], columns[key], label=key)
    ax.set(xlabel=x_key, ylabel="value", title=title)
    if log_y:
        ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    return Path(png_path)
