"""Readers of what a logger wrote, with each logger's own format: TensorBoard event files (its
EventAccumulator), a CSVLogger's metrics.csv, a W&B offline run (`run-*.wandb`: LevelDB's log
format of `wandb_internal_pb2.Record`s; wandb ships no reader of it), and an MLflow run. Each
gives `{metric: {step: value}}` so that the tests can hold them against one another."""

from __future__ import annotations

import csv
import json
import struct
from pathlib import Path

Series = dict[str, dict[int, float]]
W_AND_B_BOOKKEEPING = {"_step", "_runtime", "_timestamp", "trainer/global_step", "epoch"}


def tensorboard_series(folder: Path) -> tuple[Series, set[str]]:
    """The scalars of a TensorBoard run folder, and the hparams plugin's tags (hyperparameters)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder))
    events.Reload()
    series = {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"] if tag != "hp_metric"}
    return series, set(events.PluginTagToContent("hparams"))


def csv_series(path: Path) -> Series:
    """A Lightning CSVLogger's metrics.csv."""
    series: Series = {}
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            for key, value in row.items():
                if key not in ("step", "epoch") and value not in ("", None):
                    series.setdefault(key, {})[int(float(row["step"]))] = float(value)
    return series


def _wandb_records(path: Path):
    from wandb.proto import wandb_internal_pb2

    raw, block = path.read_bytes(), 32768
    assert raw[:4] == b":W&B", f"{path} is not a W&B transaction log"
    position, chunks = 7, []
    while position + 7 <= len(raw):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", raw[position:position + 7]) if left >= 7 else (0, 0, 0)
        if kind == 0:  # a block's zero trailer
            position += left
            continue
        chunks.append(raw[position + 7:position + 7 + length])
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(b"".join(chunks))
            chunks = []
            yield record


def wandb_run(path: Path) -> tuple[str, str, Series, dict]:
    """A W&B offline run: its name, group, metric series (at `trainer/global_step`) and config."""
    name = group = ""
    series: Series = {}
    config: dict = {}
    for record in _wandb_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            name, group = record.run.display_name, record.run.run_group
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            for key, value in row.items():
                if key not in W_AND_B_BOOKKEEPING:
                    series.setdefault(key, {})[int(row["trainer/global_step"])] = float(value)
    return name, group, series, config


def mlflow_series(uri: str, run_id: str) -> Series:
    import mlflow

    client = mlflow.MlflowClient(uri)
    return {key: {m.step: m.value for m in client.get_metric_history(run_id, key)}
            for key in client.get_run(run_id).data.metrics}
