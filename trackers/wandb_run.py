"""A Weights & Biases run (-logger wandb). wandb's environment applies (WANDB_MODE=offline
logs to files only, WANDB_PROJECT, WANDB_API_KEY, ...); its files go in the -save folder
unless WANDB_DIR names another."""

import os

import errors
from trackers import PROJECT


class Run:
    """A started wandb run."""

    def __init__(self, run, folder: str):
        self.run, self.id = run, run.id
        mode = "offline" if run.settings.mode in ("offline", "dryrun") else "online"
        shown = run.url if mode == "online" and run.url else os.path.join(folder, "wandb")
        self.where = f"=> Logging to wandb run {run.id} ({mode}: {shown})"

    def log(self, values: dict, step: int) -> None:
        """Figures at a global training iteration."""
        self.run.log(values, step=step)

    def close(self, final: dict, finished: bool) -> None:
        """The final scores as the run's summary; then the run ends."""
        import wandb

        self.run.summary.update(final)
        self.run.finish(exit_code=0 if finished else 1)
        wandb.teardown()  # its service and settings end with the run (several runs a process)


def start(save: str, run_id: str | None, options: dict, name: str) -> Run:
    """A new wandb run of the options, or the run run_id continued; UsageError if it
    cannot start (no network, no login)."""
    import wandb

    folder = os.environ.get("WANDB_DIR") or save
    os.makedirs(folder, exist_ok=True)
    # The tool prints its own lines: wandb neither wraps stdout nor prints its banner.
    settings = wandb.Settings(console="off", silent=True)
    try:
        run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", PROJECT),
            name=name,
            id=run_id,
            resume="allow" if run_id else None,
            config=options,
            dir=folder,
            settings=settings,
        )
    except Exception as exc:  # wandb raises its own errors and others (no network, no key)
        wandb.teardown()
        raise errors.UsageError(
            f"-logger wandb could not start a run: {errors.one_line(exc)}; log in (wandb"
            " login), or set WANDB_MODE=offline to write the run to files (wandb sync uploads"
            " them later)"
        ) from None
    return Run(run, folder)
