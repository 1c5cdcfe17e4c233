"""Train or evaluate ResNet / PreResNet / ResNeXt / ResNeSt / SENet: python main.py -dataset
... (see -h)."""

import gc
import os
import signal
import sys

from runtime.slurm import DEFAULT_SIGNALS  # no torch: loaded before the signals are set


def stop_while_starting() -> None:
    """From the first line on, SIGINT (Ctrl-C) and SIGTERM while the modules load (torch
    takes seconds) end the process with one line and the signal's exit status: nothing
    has been read or written yet. run() handles them from its start on."""

    def stopped(number, _frame) -> None:
        name = signal.Signals(number).name
        os.write(2, f"\n=> Stopped by {name} while starting; nothing was saved\n".encode())
        os._exit(128 + number)

    for number in (signal.SIGINT, signal.SIGTERM):
        signal.signal(number, stopped)
    # A requeue signal (sbatch --signal) that comes now waits, pending, for the run's own
    # handling (launch.StopRequest.release_held lets it through): it may ask for a requeue.
    signal.pthread_sigmask(signal.SIG_BLOCK, DEFAULT_SIGNALS)


if __name__ == "__main__":
    stop_while_starting()

# The imports below take seconds (torch): a stop while they load is handled (above).


import checkpoints
import datasets
import errors
from models import setup
from progress import Progress, RunClock, RunRecords
from recipe import averaging
from run import assemble, epochs, layouts
from run import plan as plans
from run.plan import Plan
from runtime import devices, launch, parallel, slurm
from runtime.devices import host_record
from runtime.launch import Processes
from trackers import Trackers


def run(plan: Plan) -> int:
    """What main.lua does, in each process of the job; a requeue signal before training
    requeues a SLURM job all the same (it starts again)."""
    requeue = plan.launch.requeue
    with launch.restored_settings(), launch.stop_requests(requeue.signals) as stop:
        job = launch.job_environment()
        try:
            stop.release_held()
            return run_job(plan, job, stop)
        except errors.Stopped as exc:
            if exc.signal_number not in requeue.signals:
                raise
            print(slurm.before_training(requeue, exc, plan.loop.save, job.rank))
            return 128 + exc.signal_number


def run_job(plan: Plan, job, stop: launch.StopRequest) -> int:
    """The run's checks that need the job, then its processes' group, then the run."""
    devices.check_job(plan.launch.device, job.world)
    launch.check_global_batch(plan.data.batch_size, job.world)
    if not plan.test_only:  # testing writes nothing in -save
        checkpoints.check_run_folder(plan.loop.save, plan.loop.resume, plan.loop.overwrite)
    launch.configure_backends(plan.launch.cudnn)  # before CUDA starts: cuBLAS reads it then
    timeout = plan.launch.rendezvous_timeout
    with launch.process_group(plan.launch.device, job, timeout, stop) as processes:
        return run_process(plan, processes, stop)


def run_process(plan: Plan, processes: Processes, stop: launch.StopRequest) -> int:
    """The run built top-down, each part from those before it: the process's place, the
    checkpoint to continue, the data, the model and its placement; then it is tested once
    (-testOnly) or trained."""
    place = assemble.process_place(plan, processes, stop)
    checkpoint = checkpoints.latest_of_run(plan.loop.resume)  # None: start afresh
    start_file = setup.start_weights(plan.model, checkpoint, processes)  # -retrain, -weights
    for note in plan.notes:
        print(note)
    stop.doing = "loading the data"
    loaders = parallel.in_turns(
        processes,
        lambda: datasets.create_loaders(plan.data, place.device, processes.rank, processes.world),
    )
    with datasets.closed_after(loaders):
        classes = list(loaders[0].dataset.classes)
        if not plan.test_only:
            saved = checkpoint.model.average if checkpoint else None
            averaging.check_start(
                saved, plan.recipe.ema, plan.recipe.ema_every, len(loaders[0]), plan.loop.resume
            )
        model, arch = setup.build_model(plan.model, classes, checkpoint, start_file, plan.test_only)
        setup.check_classes(model, classes, checkpoint.model if checkpoint else None)
        steps = 0 if plan.test_only else len(loaders[0]) * plan.loop.n_epochs
        plan = layouts.chosen(plan, model, place, steps)
        placed = setup.prepare_model(plan.model, model, place.device, place.dtypes, processes.world)
        if plan.test_only:
            return test_run(plan, placed, place, loaders, (checkpoint, start_file))
        return train_run(plan, placed, place, loaders, (arch, classes), checkpoint)


def test_run(plan: Plan, placed: tuple, place: launch.Place, loaders, sources) -> int:
    """-testOnly: the model tested once on the val set (sources: the -resume checkpoint and
    the -retrain file, or None)."""
    checkpoint, _ = sources
    if (note := assemble.test_only_note(plan, sources)) and place.processes.rank == 0:
        print(note)
    progress = Progress(**epochs.shown(loaders, plan.recipe.print_every))
    trainer = assemble.trainer(plan, placed, place, checkpoint, progress)
    return epochs.test_once(plan.loop, trainer, loaders, place.stop, plan.data.batch_size)


def train_run(plan: Plan, placed: tuple, place: launch.Place, loaders, network, checkpoint) -> int:
    """Train from the start (or -resume) point to -nEpochs, testing after each epoch, with
    the run's records in -save (network: the arch and classes the model files describe)."""
    loop, (arch, _) = plan.loop, network
    frozen = (plan.model.frozen_stages, plan.model.norm_eval)  # checkpoints record them
    record = setup.options_record(plan.options, arch)
    run_folder = checkpoints.RunFolder(loop.save, loop.overwrite, record)
    records = trackers = None
    if place.processes.rank == 0:
        print(f"=> Saving checkpoints and records in {os.path.abspath(loop.save)}")
        trackers = Trackers(loop.trackers, loop.save, loop.resume, record)  # -logger
        segment = {**epochs.start_point(loop.epoch_number, checkpoint), **host_record(place.device),
                   **slurm.job_record(os.environ)}  # fmt: skip
        records = RunRecords(loop.save, len(loaders[0]), tensorboard=loop.tensorboard,
                             options=record, before_first_write=run_folder,
                             segment=segment, trackers=trackers)  # fmt: skip
    shown = epochs.shown(loaders, plan.recipe.print_every)
    progress = Progress(record=records, clock=RunClock(loop.n_epochs), **shown)
    trainer = assemble.trainer(plan, placed, place, checkpoint, progress)
    side = plan.data.input_side()
    batch = plan.data.batch_size  # global
    share = max(1, batch // place.processes.world)
    trainer.evaluation.try_evaluation((share, 3, side, side))  # too big: fails now, not later
    for line in trackers.start() if trackers else ():  # one line if one cannot start
        print(line)
    epoch_loop = epochs.EpochLoop(
        loop, trainer, loaders, run_folder, (*network, frozen), checkpoint, place, batch
    )
    if checkpoint:  # last: building the model draws from the generators, training goes on
        devices.restore_rng_state(checkpoint.state.rng, place.processes.rank, place.used)
    return epochs.run_to_the_end(epoch_loop, loop.save, records, plan.launch.requeue)


def main(argv=None) -> int:
    """Entry point: one 'error:' line and exit status 2 for every bad input."""
    before = {"errors": sys.stdout.errors, "line_buffering": sys.stdout.line_buffering}
    # File names that are not UTF-8; each line out at once in a log file (tail -f, a job's
    # output), not when 8 KiB have gathered.
    sys.stdout.reconfigure(errors="backslashreplace", line_buffering=True)
    try:
        opts = plans.parse(argv)
        return run(plans.make_plan(opts))
    except Exception as exc:  # what ended the run, said once: exit_status tells bugs apart
        return errors.exit_status(exc, distributed=launch.in_a_job())
    except KeyboardInterrupt as exc:
        return errors.exit_status(exc, distributed=False)
    finally:
        sys.stdout.reconfigure(**before)


def flush_output(status: int) -> int:
    """Flush stdout and return the exit status; when stdout cannot be written (a full
    device, a closed pipe) say so unless the run already failed, and point it at /dev/null
    so that the interpreter's exit does not complain again."""
    try:
        sys.stdout.flush()
        return status
    except OSError as exc:
        if status == 0:
            print(f"error: {errors.one_line(exc)}", file=sys.stderr)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return status or 1


if __name__ == "__main__":
    status = flush_output(main())
    if launch.left_a_process_group():
        sys.stderr.flush()
        os._exit(status)  # the interpreter's exit would wait on the group's pending collective
    # Everything is written and closed: spare the exit a collection over the hundreds of
    # thousands of objects torch loaded (about a second, more on a busy machine).
    gc.freeze()
    sys.exit(status)
