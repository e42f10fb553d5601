"""TensorBoard events for one run (``logger=tensorboard``): curves, pictures and an HParams row.

A window onto the same numbers metrics.csv holds, for people who already have TensorBoard
open. Everything goes into ``<run dir>/tb/`` as one TensorBoard run, hparams included (not the
timestamped sub-run ``SummaryWriter.add_hparams`` makes), so ``tensorboard --logdir <sweep>``
shows one row per member in the HParams table, each row linked to that member's curves.

A continued run (``--resume``) first cuts the earlier processes' events back to its checkpoint
(:func:`trim_events`), so the curves hold each step once and its HParams row is the finished run's.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from vaecli.atomic import atomic_write_bytes
from vaecli.runfolder.files import TB_DIR
from vaecli.runfolder.metrics import METRIC_COLUMNS

# metrics-row keys written as scalars, each as "<split>/<key>": every column but the row's place
PLACE_KEYS = ("step", "epoch", "split", "held_out", "nats_are")  # where a row is, not what it measures
SCALAR_KEYS = tuple(c for c in METRIC_COLUMNS if c not in PLACE_KEYS)  # an objective's own terms follow them
HParamValue = float | int | str
# a run's outcome -> the HParams session status (an interrupted run may still be continued)
SESSION_STATUS = {"ok": "STATUS_SUCCESS", "failed": "STATUS_FAILURE", "interrupted": "STATUS_UNKNOWN"}


def scalar_tags(row: Mapping[str, Any]) -> dict[str, float]:
    """A metrics row as TensorBoard tags: ``train/loss``, ``test/neg_elbo_nats``, ...

    Blank cells (a test row has no images/s) are left out rather than written as zeros.
    """
    split = row["split"]
    tags = {}
    for key, value in row.items():  # the ELBO columns and an objective's own terms alike
        if key in PLACE_KEYS or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        tags[f"{split}/{key}"] = float(value)
    return tags


def flatten(config: Mapping[str, Any], prefix: str = "") -> dict[str, HParamValue]:
    """Nested config as dotted keys with values the HParams plugin can show and filter.

    Numbers stay numbers (so the table sorts them); lists, booleans and nulls become the text
    a Hydra override would use, since the plugin has no type for them.
    """
    flat: dict[str, HParamValue] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, prefix=f"{name}."))
        elif isinstance(value, bool):
            flat[name] = "true" if value else "false"
        elif isinstance(value, int | float):
            flat[name] = value
        elif value is None:
            flat[name] = "null"
        elif isinstance(value, list | tuple):
            flat[name] = "[" + ", ".join(str(item) for item in value) + "]"
        else:
            flat[name] = str(value)
    return flat


class TensorBoardLog:
    """Writes one run's events into ``<run dir>/tb/``; use as a context manager so events reach disk."""

    def __init__(self, run_dir: Path, resumed_from: int = 0):
        """``resumed_from``: the checkpoint's step when the run continues (its earlier events are trimmed)."""
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(run_dir) / TB_DIR
        if resumed_from:
            trim_events(self.log_dir, resumed_from)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.last_step: dict[str, int] = {}  # tag -> last step written, so hparams can fill in what is missing

    def metrics(self, row: Mapping[str, Any]) -> None:
        """Every numeric value of a metrics row (train.py's rows) as a scalar at the row's step."""
        step = int(row["step"])
        for tag, value in scalar_tags(row).items():
            self.writer.add_scalar(tag, value, step)
            self.last_step[tag] = step

    def image(self, tag: str, grid: Any, step: int) -> None:
        """A picture at ``step``: a (channels, height, width) tensor or array with values in [0, 1]."""
        self.writer.add_image(tag, grid, step, dataformats="CHW")

    def hparams(
        self,
        config: Mapping[str, Any],
        final: Mapping[str, Mapping[str, Any]],
        step: int,
        status: str = "ok",
    ) -> None:
        """The run's flattened config and final metrics as one session of TensorBoard's HParams plugin.

        ``final`` maps a split to its last metrics row. The plugin shows, for each metric tag, the
        last value of that scalar in the run, so the metric columns are the curves' own tags;
        a final value that was never written as a scalar is written now, at ``step``. ``status`` is the
        run's outcome (:data:`SESSION_STATUS`): a failed run still gets its row (Failure), and an
        interrupted one is Unknown until it is continued, so the table shows which did not finish.

        No experiment summary is written: the plugin takes the first one it finds as the whole
        sweep's, whereas without one it builds the experiment from every member's session and
        puts the keys whose values differ (the swept ones) first, ticked, in the table.
        """
        from torch.utils.tensorboard.summary import hparams

        metrics: dict[str, float] = {}
        for split, row in final.items():
            metrics.update(scalar_tags({**row, "split": split}))
        for tag, value in metrics.items():
            if tag not in self.last_step:
                self.writer.add_scalar(tag, value, step)
        _, start, _ = hparams(flatten(config), metrics)
        for summary in (start, session_end(status)):
            self.writer.file_writer.add_summary(summary, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TensorBoardLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class RunEvents:
    """``logger=tensorboard`` for one run: the row hook of the training loop, and the HParams row at the end.

    Every metrics row becomes scalars; at a test row the run's pictures (``latents.run_pictures``)
    are drawn from the model as it is then. Leaving the ``with`` block writes the config with the
    last rows seen as the run's HParams session, marked failed when the block raised, so a sweep's
    table shows the members that did not finish too.
    """

    def __init__(self, run_dir: Path, config: Mapping[str, Any], data: Any, resumed_from: int = 0):
        """``config``: the run's config as its HParams row shows it; ``data``: the run's ``data`` node
        (name, root and the dataset's own settings), where the test images of the pictures come from;
        ``resumed_from``: the checkpoint's step when the run continues."""
        self.config = config
        self.data = data
        self.outcome = "ok"  # the run's status when the block ends without an error ("interrupted")
        self.events = TensorBoardLog(run_dir, resumed_from)
        self.final: dict[str, Mapping[str, Any]] = {}  # split -> its last row
        self.step = 0
        self.test_images: Any = None

    def __call__(self, row: Mapping[str, Any], model: Any) -> None:
        self.events.metrics(row)
        self.final[row["split"]] = row
        self.step = max(self.step, int(row["step"]))
        if row["split"] == "test":
            self.pictures(model)

    def pictures(self, model: Any) -> None:
        from vaecli.inspect import images
        from vaecli.measure import latents

        if self.test_images is None:
            self.test_images = first_test_images(self.data, latents.RUN_ORIGINALS)
        model.eval()
        for name, (tiles, columns) in latents.run_pictures(model, self.test_images).items():
            self.events.image(f"images/{name}", images.grid_tensor(tiles, columns), self.step)
        model.train()

    def __enter__(self) -> RunEvents:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        stopped = kind is not None and issubclass(kind, KeyboardInterrupt)  # a second Ctrl-C: still resumable
        self.close("interrupted" if stopped else "failed" if kind is not None else self.outcome)

    def close(self, status: str) -> None:
        """The HParams session of the rows seen so far with the run's ``status``, then the events reach disk."""
        try:
            self.events.hparams(self.config, self.final, self.step, status=status)
        finally:
            self.events.close()


def first_test_images(data: Any, count: int) -> Any:
    """The test images the run's figures show (the loop keeps its test split to itself)."""
    from vaecli.data.tensors import load_split

    return load_split(str(data.name), str(data.root), train=False, limit=count, options=data).images


def session_end(outcome: str) -> Any:
    """The HParams session-end summary with the status of ``outcome`` (torch only writes success)."""
    from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
    from tensorboard.plugins.hparams.api_pb2 import Status
    from tensorboard.plugins.hparams.metadata import PLUGIN_DATA_VERSION, PLUGIN_NAME, SESSION_END_INFO_TAG
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData, SessionEndInfo

    status = Status.Value(SESSION_STATUS[outcome])
    content = HParamsPluginData(session_end_info=SessionEndInfo(status=status), version=PLUGIN_DATA_VERSION)
    metadata = SummaryMetadata(
        plugin_data=SummaryMetadata.PluginData(plugin_name=PLUGIN_NAME, content=content.SerializeToString())
    )
    return Summary(value=[Summary.Value(tag=SESSION_END_INFO_TAG, metadata=metadata)])


def is_hparams(event: Any) -> bool:
    """Whether an event carries an HParams summary (a session's start or end, or an experiment)."""
    from tensorboard.plugins.hparams.metadata import PLUGIN_NAME

    return any(value.metadata.plugin_data.plugin_name == PLUGIN_NAME for value in event.summary.value)


def trim_events(log_dir: Path, last_step: int) -> None:
    """Cut earlier processes' events files back to what a run continued at ``last_step`` stands on.

    Events after that step go (a killed process wrote them; the continuing one writes them again),
    and so do the earlier HParams sessions: TensorBoard keeps the first session a run holds, so the
    continued run's must be the only one. Records are read and written with TensorBoard's own
    reader and writer, byte for byte, and a file is replaced whole (write-then-rename).
    """
    from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
    from tensorboard.compat.proto.event_pb2 import Event
    from tensorboard.summary.writer.record_writer import RecordWriter

    for path in sorted(log_dir.glob("*tfevents*")):
        records = list(RawEventFileLoader(str(path)).Load())
        kept = [r for r in records if (event := Event.FromString(r)).step <= last_step and not is_hparams(event)]
        if len(kept) < len(records):
            buffer = io.BytesIO()
            writer = RecordWriter(buffer)
            for record in kept:
                writer.write(record)
            # a temporary name without "tfevents", which TensorBoard would read as an events file
            atomic_write_bytes(path, buffer.getvalue(), prefix=".trimmed-")
