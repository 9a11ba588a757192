"""A sweep's MLflow bookkeeping: its experiment and parent run, and what each trial's runs say.

Trials are found by the `isep.trial` tag every `isep fit` writes (dataset, model and data
settings, seed and training length: `isep.runs.trial_key`), so a trial finished by an earlier
invocation — or by hand with the same settings into the same experiment — is not run again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SWEEP_TAG = "isep.sweep"
TRIAL_TAG = "isep.trial"
EARLY_STOP_TAG = "isep.early_stopped"


def absolute_uri(uri: str) -> str:
    """A tracking URI that means the same store from any working directory (Ray workers' differ)."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/"):
        return prefix + str(Path(uri[len(prefix):]).resolve())
    if "://" not in uri:
        return str(Path(uri).resolve())
    return uri


@dataclass
class TrialRecord:
    run_id: str
    status: str  # MLflow: RUNNING, FINISHED, FAILED, KILLED, SCHEDULED
    reason: str | None
    run_dir: str | None
    early_stopped: bool


class SweepRecords:
    """The MLflow side of one sweep (experiment `name`)."""

    def __init__(self, uri: str, name: str) -> None:
        import mlflow

        from isep.store_lock import store_lock

        self.name = name
        with store_lock(uri):  # the store may be new, and another sweep or fit may start with it
            self.client = mlflow.MlflowClient(uri)
            experiment = self.client.get_experiment_by_name(name)
            self.experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(name)

    def parent_run(self, description: dict) -> str:
        """The sweep's parent run: the one from an earlier invocation of the same sweep, or a new one."""
        found = self.client.search_runs([self.experiment_id], f"tags.`{SWEEP_TAG}` = '{self.name}'",
                                        order_by=["attributes.start_time DESC"], max_results=1)
        if found:
            run_id = found[0].info.run_id
            self.client.update_run(run_id, status="RUNNING")
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=f"sweep {self.name}", tags={SWEEP_TAG: self.name})
        for key, value in description.items():
            self.client.log_param(run.info.run_id, key, str(value)[:500])
        return run.info.run_id

    def trials(self) -> dict[str, TrialRecord]:
        """The latest run of each trial key in the experiment."""
        from isep.results.store import paged

        runs = paged(lambda token: self.client.search_runs(
            [self.experiment_id], f"tags.`{TRIAL_TAG}` != ''", order_by=["attributes.start_time ASC"],
            max_results=1000, page_token=token))
        records: dict[str, TrialRecord] = {}
        for run in runs:  # oldest first: the latest run of a key wins
            tags = run.data.tags
            records[tags[TRIAL_TAG]] = TrialRecord(run.info.run_id, run.info.status, tags.get("failure_reason"),
                                                   tags.get("run_dir"), tags.get(EARLY_STOP_TAG) == "true")
        return records

    def mark(self, run_id: str, status: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, value)
        self.client.set_terminated(run_id, status)
