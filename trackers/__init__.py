"""The experiment trackers a run also logs to (-logger wandb,mlflow): its options, the
training lines (loss, errors, LR) at the printing interval, each epoch's train and test
errors, and the final scores. Only rank 0 logs; a resumed run continues the same tracker
runs, whose ids are kept in <save>/trackers.json."""

import importlib.util
import json
import math
import os
import re

import errors

TRACKERS = ("wandb", "mlflow")
IDS_FILE = "trackers.json"
PROJECT = (
    "resnet-pytorch"  # the wandb project and MLflow experiment unless the environment names one
)
# What a tracker's own run id may look like: ids come from a file and must not choose a path.
RUN_ID = {"wandb": re.compile(r"[a-z0-9]{1,64}"), "mlflow": re.compile(r"[0-9a-f]{32}")}


def names(text: str) -> tuple[str, ...]:
    """-logger's trackers: none, or a comma-separated list of TRACKERS; UsageError else."""
    if text == "none":
        return ()
    given = tuple(name.strip() for name in text.split(","))
    unknown = [name for name in given if name not in TRACKERS]
    if unknown or len(set(given)) != len(given):
        raise errors.UsageError(
            f"-logger {text}: give none or one or more of {', '.join(TRACKERS)}, comma-separated"
            " (each once)"
        )
    return given


def missing_package(trackers: tuple[str, ...]) -> str | None:
    """The package of a tracker given that is not installed, else None."""
    return next((name for name in trackers if importlib.util.find_spec(name) is None), None)


def saved_ids(resume: str) -> dict[str, str]:
    """The tracker run ids a -resume folder's trackers.json holds ({} when none); a file
    that is not what this tool writes is an error naming it."""
    path = os.path.join(resume, IDS_FILE)
    if resume == "none" or not os.path.isfile(path):
        return {}
    try:
        with open(path) as handle:
            ids = json.load(handle)
    except (OSError, ValueError) as exc:
        raise errors.UsageError(f"cannot read {path}: {errors.one_line(exc)}") from None
    if not isinstance(ids, dict) or not all(
        name in RUN_ID and isinstance(value, str) and RUN_ID[name].fullmatch(value)
        for name, value in ids.items()
    ):
        raise errors.UsageError(
            f"{path} is not a trackers.json written by this tool: delete it to start new"
            " tracker runs"
        )
    return ids


class Trackers:
    """The tracker runs of a run: started when training is about to start (start), then
    fed every record (log) and closed with the final scores (close)."""

    def __init__(self, trackers: tuple[str, ...], save: str, resume: str, options: dict):
        self.trackers, self.save, self.resume, self.options = trackers, save, resume, options
        self.runs = {}  # tracker -> its run (wandb_run.Run, mlflow_run.Run)

    def start(self) -> list[str]:
        """Start (or continue) each tracker's run; the lines that say where they log. A
        tracker that cannot start is one UsageError, before training."""
        from trackers import mlflow_run, wandb_run  # their packages load only when asked for

        modules = {"wandb": wandb_run, "mlflow": mlflow_run}
        ids = saved_ids(self.resume)
        name = os.path.basename(os.path.abspath(self.save))
        said = []
        for tracker in self.trackers:
            run = modules[tracker].start(self.save, ids.get(tracker), self.options, name)
            self.runs[tracker] = run
            said.append(run.where)
        return said

    def ids(self) -> dict[str, str]:
        """The run id of each tracker started."""
        return {tracker: run.id for tracker, run in self.runs.items()}

    def write_ids(self) -> None:
        """Keep the run ids in the -save folder (once it holds the run's files)."""
        if self.runs:
            with open(os.path.join(self.save, IDS_FILE), "w") as handle:
                json.dump(self.ids(), handle)

    def log(self, record: dict, step: int) -> None:
        """A record of the run (progress.RunRecords) at the global training iteration step:
        the training lines and each pass's summary; test lines are left to metrics.jsonl."""
        if not self.runs or (record["split"] != "train" and record["iter"] is not None):
            return
        if record["iter"] is None:
            split = record["split"]
            values = {f"epoch/{split}_{key}": value for key, value in numbers(record).items()}
            values["epoch"] = record["epoch"]
        else:
            values = {f"train/{key}": value for key, value in numbers(record).items()}
        for run in self.runs.values():
            run.log(values, step)

    def close(self, final: dict, finished: bool) -> None:
        """The final scores (best top-1 and its epoch, the last epoch's), then end each run
        (finished: the run trained to its last epoch; else it was stopped or failed)."""
        final = {key: value for key, value in final.items() if math.isfinite(value)}
        for tracker, run in self.runs.items():
            try:
                run.close(final, finished)
            except Exception as exc:  # the checkpoint is saved: a tracker's failure ends nothing
                print(f"=> warning: {tracker} could not close run {run.id}: {errors.one_line(exc)}")
        self.runs = {}


def numbers(record: dict) -> dict:
    """The record's figures (errors, loss, LR, speed)."""
    keys = ("loss", "top1", "top5", "lr", "img_s", "data_share")
    return {key: float(record[key]) for key in keys if key in record}
