"""Train or evaluate ResNet / PreResNet / ResNeXt / ResNeSt / SENet: python main.py -dataset
... (see -h)."""

import os
import signal
import sys


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


if __name__ == "__main__":
    stop_while_starting()

# The imports below take seconds (torch): a stop while they load is handled (above).
from functools import partial

import torch

import averaging
import checkpoints
import datasets
import devices
import epochs
import errors
import launch
import layouts
import models
import parallel
import plan as plans
from launch import Processes
from models import pretrained, setup
from plan import Plan


def run(plan: Plan, named: pretrained.Named | None) -> int:
    """What main.lua does, in each process of the job (named: the resolved -weights)."""
    with launch.restored_settings(), launch.stop_requests() as stop:
        job = launch.job_environment()
        devices.check_job(plan.launch.device, job.world)
        launch.check_global_batch(plan.loop.batch_size, job.world)
        if not plan.test_only:  # testing writes nothing in -save
            checkpoints.check_run_folder(plan.loop.save, plan.loop.resume, plan.loop.overwrite)
        launch.configure_backends(plan.launch.cudnn)  # before CUDA starts: cuBLAS reads it then
        timeout = plan.launch.rendezvous_timeout
        with launch.process_group(plan.launch.device, job, timeout, stop) as processes:
            return run_process(plan, processes, stop, named)


def run_process(
    plan: Plan, processes: Processes, stop: launch.StopRequest, named: pretrained.Named | None
) -> int:
    """Check, load the data, build the model, then train or test."""
    device, used = set_up_process(plan, processes)
    checkpoint = checkpoints.latest_of_run(plan.loop.resume)  # None: start afresh
    if checkpoint:
        devices.restore_rng_state(checkpoint.state.rng, processes.rank, used)
    retrained = setup.start_weights(plan.model, named, checkpoint, processes)
    for note in plan.notes:
        print(note)
    stop.doing = "loading the data"
    loaders = parallel.in_turns(
        processes,
        lambda: datasets.create_loaders(plan.data, device, processes.rank, processes.world),
    )
    with datasets.closed_after(loaders):
        classes = list(loaders[0].dataset.classes)
        if not plan.test_only:
            saved = checkpoint.model.average if checkpoint else None
            averaging.check_start(
                saved, plan.recipe.ema, plan.recipe.ema_every, len(loaders[0]), plan.loop.resume
            )
        model, arch = setup.build_model(plan.model, classes, checkpoint, retrained)
        setup.check_classes(model, classes, checkpoint.model if checkpoint else None)
        steps = 0 if plan.test_only else len(loaders[0]) * plan.loop.n_epochs
        plan = layouts.chosen(plan, model, device, processes.world, steps)  # -memoryFormat auto
        if plan.test_only:
            return epochs.test_only(
                plan, model, device, loaders, (checkpoint, retrained), processes, stop
            )
        return epochs.train_and_test(
            plan, model, (arch, classes), (device, used), loaders, checkpoint, processes, stop
        )


def set_up_process(plan: Plan, processes: Processes) -> tuple[torch.device, list[torch.device]]:
    """This process's device (and all it uses), its precision and allocator, the seed; and
    what can be checked before any work: the images fit in memory, -compile works, the
    network flags build a network."""
    setting = plan.launch
    device = devices.select_device(
        setting.device, setting.n_gpu, processes.local_rank, processes.world
    )
    if setting.auto_device and (line := devices.fallback_line(device.type, setting.n_gpu)):
        print(line)
    launch.precision_settings(setting.precision, device)  # a bad combination fails first
    datasets.check_image_sizes(
        plan.data.dataset,
        plan.data.crops,
        batch=max(1, plan.data.batch_size // processes.world),
        workers=plan.data.workers,
        memory=partial(devices.memory, device),
        device=device.type,
    )
    parallel.check_compile(setting.compile, device, setting.n_gpu, processes.world)
    launch.configure_host_allocator(setting.host_allocator)  # before workers fork: inherited
    torch.manual_seed(setting.seed)
    models.check_arch(
        {**plan.model.arch, "nClasses": plan.model.n_classes or 1}, plan.model.frozen_stages
    )
    return device, parallel.devices_used(device, setting.n_gpu, processes.world)


def main(argv=None) -> int:
    """Entry point: one 'error:' line and exit status 2 for every bad input."""
    errors_before = sys.stdout.errors
    sys.stdout.reconfigure(errors="backslashreplace")  # file names that are not UTF-8
    try:
        opts = plans.parse(argv)
        named = plans.adopt_weights(opts)  # -weights: their network and evaluation sizes
        return run(plans.make_plan(opts), named)
    except Exception as exc:  # what ended the run, said once: exit_status tells bugs apart
        return errors.exit_status(exc, distributed=launch.in_a_job())
    except KeyboardInterrupt as exc:
        return errors.exit_status(exc, distributed=False)
    finally:
        sys.stdout.reconfigure(errors=errors_before)


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
    sys.exit(status)
