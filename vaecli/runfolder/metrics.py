"""metrics.csv: its columns, and a writer that keeps it a valid CSV at every instant, also across resumes."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path
from typing import Any

from vaecli.atomic import atomic_write_bytes
from vaecli.errors import RunError, first_line
from vaecli.objectives.terms import TERM_NAMES

METRIC_COLUMNS = [
    "step",
    "epoch",
    "split",
    "held_out",  # false when the model trained on these images (train rows; test rows under data.train_on=all)
    *TERM_NAMES,
    "images_per_s",
    "seconds",
    "nats_are",  # log-likelihood, or cross-entropy (a Bernoulli decoder on grey levels): likelihoods.nats_label
]
TIMING_COLUMNS = ("images_per_s", "seconds")


def metric_columns(own: tuple[str, ...] = ()) -> list[str]:
    """metrics.csv's columns with an objective's own terms after the ELBO columns."""
    at = METRIC_COLUMNS.index("images_per_s")
    return [*METRIC_COLUMNS[:at], *own, *METRIC_COLUMNS[at:]]


def parse_row(row: dict[str, str]) -> dict[str, Any]:
    """A metrics.csv row read back, typed as the loop wrote it."""
    typed: dict[str, Any] = {}
    for key, value in row.items():
        if key in ("split", "nats_are") or value == "":
            typed[key] = value
        elif key == "held_out":
            typed[key] = value == "True"
        else:
            typed[key] = int(value) if key == "step" else float(value)
    return typed


def kept_rows(path: Path, keep: int, own: tuple[str, ...] = ()) -> tuple[list[dict[str, Any]], bytes]:
    """The first ``keep`` rows of a stopped run's metrics.csv (those its checkpoint counted), and their bytes.

    Reads only, so `vae train --resume` checks them before anything is written. Rows past them (a
    killed run's, a last line cut mid-write) are what continuing drops; a missing file, or damage
    inside the counted rows, is named in one line.
    """
    advice = "the run cannot continue exactly; start it anew"
    try:
        lines = path.read_bytes().splitlines(keepends=True)
    except OSError as error:
        raise RunError(
            f"{path} cannot be read ({error.strerror}): its checkpoint counts {keep} rows; {advice}"
        ) from None
    kept = lines[: keep + 1]  # the header and the counted rows
    complete = len(kept) - 1 if kept and kept[-1][-1:] == b"\n" else len(kept) - 2
    if complete < keep:
        raise RunError(f"{path} holds {max(complete, 0)} complete rows where its checkpoint counted {keep}; {advice}")
    try:
        reader = csv.DictReader(io.StringIO(b"".join(kept).decode()))
        rows = [parse_row(row) for row in reader]
        if reader.fieldnames != metric_columns(own) or len(rows) != keep or any(None in row for row in rows):
            raise ValueError("columns differ from vaecli's")
    except (ValueError, TypeError, UnicodeDecodeError) as error:
        raise RunError(f"{path}: a row its checkpoint counted is damaged ({first_line(error)}); {advice}") from None
    return rows, b"".join(kept)


class MetricsWriter:
    """Appends complete rows to metrics.csv as they come, so the file is a valid CSV at every instant.

    ``keep`` continues a stopped run: its first ``keep`` rows (those its checkpoint counted) stay,
    byte for byte, and any written after the checkpoint are dropped, so no row appears twice.
    ``test_held_out`` is false when the model trained on the test images (``data.train_on=all``);
    ``nats_are`` says what every row's nats are (a log-likelihood or a cross-entropy); ``columns``
    are the objective's own terms (``kl_weight``, ``tc_nats``, ...), after the ELBO columns.
    """

    def __init__(
        self,
        path: Path,
        keep: int | None = None,
        test_held_out: bool = True,
        nats_are: str = "",
        columns: tuple[str, ...] = (),
    ):
        self.rows: list[dict[str, Any]] = []
        self.test_held_out, self.nats_are = test_held_out, nats_are
        fieldnames = metric_columns(tuple(columns))
        if keep is None:
            self.handle = path.open("w", newline="")
            csv.DictWriter(self.handle, fieldnames=fieldnames).writeheader()
        else:
            self.rows, kept = kept_rows(path, keep, tuple(columns))
            atomic_write_bytes(path, kept)
            self.handle = path.open("a", newline="")
        self.writer = csv.DictWriter(self.handle, fieldnames=fieldnames)

    def write(self, row: dict[str, Any]) -> None:
        row = {**row, "held_out": row["split"] == "test" and self.test_held_out, "nats_are": self.nats_are}
        self.rows.append(row)
        self.writer.writerow(row)
        self.handle.flush()

    def sync(self) -> None:
        """On disk, not only in the page cache: before a checkpoint that counts these rows."""
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()
