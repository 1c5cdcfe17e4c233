"""An MLflow run (-logger mlflow) in the store MLFLOW_TRACKING_URI names (else MLflow's
default: ./mlflow.db), in the experiment MLFLOW_EXPERIMENT_NAME names (else resnet-pytorch)."""

import os
import time
import urllib.error
import urllib.request

import errors
from trackers import PROJECT

PARAM_LENGTH = 6000  # MLflow's longest parameter value


class Run:
    """A started MLflow run, written through the tracking client (no global active run)."""

    def __init__(self, client, run_id: str, where: str):
        self.client, self.id, self.where = client, run_id, where

    def log(self, values: dict, step: int) -> None:
        """Figures at a global training iteration."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(key, value, stamp, step) for key, value in values.items()]
        self.client.log_batch(self.id, metrics=metrics)

    def close(self, final: dict, finished: bool) -> None:
        """The final scores as metrics; then the run ends (FINISHED, else KILLED)."""
        self.log({f"final/{key}": float(value) for key, value in final.items()}, 0)
        self.client.set_terminated(self.id, status="FINISHED" if finished else "KILLED")


def start(save: str, run_id: str | None, options: dict, name: str) -> Run:
    """A new MLflow run with the options as its parameters, or the run run_id continued;
    UsageError if the store cannot be reached."""
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = mlflow.get_tracking_uri()
    check_server(uri)
    client = mlflow.MlflowClient(uri)
    experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", PROJECT)
    try:
        if run_id is None:
            run_id = new_run(client, experiment, name, options)
        else:
            client.update_run(run_id, status="RUNNING")
    except MlflowException as exc:
        raise errors.UsageError(
            f"-logger mlflow could not start a run in {uri}: {errors.one_line(exc)}"
        ) from None
    return Run(client, run_id, f"=> Logging to MLflow run {run_id} ({experiment}, {uri})")


def new_run(client, experiment: str, name: str, options: dict) -> str:
    """A run in the experiment (made if missing) holding the options as parameters."""
    from mlflow.entities import Param

    found = client.get_experiment_by_name(experiment)
    experiment_id = found.experiment_id if found else client.create_experiment(experiment)
    run_id = client.create_run(experiment_id, run_name=name).info.run_id
    params = [Param(key, str(value)[:PARAM_LENGTH]) for key, value in flat(options).items()]
    for first in range(0, len(params), 100):  # MLflow takes 100 parameters a call
        client.log_batch(run_id, params=params[first : first + 100])
    return run_id


def flat(options: dict, prefix: str = "") -> dict:
    """Nested options (arch) as dotted names."""
    out = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def check_server(uri: str) -> None:
    """A tracking server that does not answer its health check within 10 s is an error
    now, not after minutes of MLflow's retries."""
    if not uri.startswith(("http://", "https://")):
        return
    try:
        urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
    except urllib.error.HTTPError:
        return  # it answered (a proxy or a login in front of it): MLflow says the rest
    except (urllib.error.URLError, OSError) as exc:
        raise errors.UsageError(
            f"-logger mlflow: the tracking server {uri} does not answer"
            f" ({errors.one_line(exc)}); start it, or set MLFLOW_TRACKING_URI to a reachable"
            " one (or a local store: sqlite:///mlflow.db)"
        ) from None
