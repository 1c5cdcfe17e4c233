"""The builders main.run_process assembles a run from, one part each: the process's place,
the trainer of the recipe on the placed model, -testOnly's note."""

from functools import partial

import torch

import checkpoints
import datasets
import models
import opts as options
import recipe
import train
from run.plan import Plan
from runtime import devices, launch, parallel
from runtime.launch import Processes


def process_place(plan: Plan, processes: Processes, stop: launch.StopRequest) -> launch.Place:
    """This process's place (its device and all it uses, its dtypes), its allocator and
    seed; and what can be checked before any work: the images fit in memory, -compile
    works, the network flags build a network."""
    setting = plan.launch
    device = devices.select_device(
        setting.device, plan.model.n_gpu, processes.local_rank, processes.world
    )
    if setting.auto_device and (line := devices.fallback_line(device.type, plan.model.n_gpu)):
        print(line)
    dtypes = launch.precision_settings(setting.precision, device)  # a bad one fails first
    datasets.check_image_sizes(
        plan.data.dataset,
        plan.data.crops,
        batch=max(1, plan.data.batch_size // processes.world),
        workers=plan.data.workers,
        memory=partial(devices.memory, device),
        device=device.type,
    )
    parallel.check_compile(plan.model.compile, device, plan.model.n_gpu, processes.world)
    launch.configure_host_allocator(setting.host_allocator)  # before workers fork: inherited
    torch.manual_seed(plan.data.seed)  # -manualSeed: torch's draws and the data's
    models.check_arch(
        {**plan.model.arch, "nClasses": plan.model.arch["nClasses"] or 1}, plan.model.frozen_stages
    )
    used = parallel.devices_used(device, plan.model.n_gpu, processes.world)
    return launch.Place(device, used, dtypes, processes, stop)


def trainer(plan: Plan, placed: tuple, place: launch.Place, checkpoint, progress):
    """The recipe's parts on the placed model (to train, to evaluate): the optimizer (from
    -resume or -optimState), schedule, loss and step, batch mixing, the weight average,
    the evaluation, and the trainer that holds them."""
    spec, (trained, evaluated) = plan.recipe, placed
    layout = devices.MEMORY_FORMATS[plan.model.memory_format]
    placement = train.Placement(
        place.device, layout, *place.dtypes, spec.clip_grad_norm, spec.accum_steps
    )
    optimizer = recipe.make_optimizer(trained, spec, checkpoint)
    step = train.Step(trained, recipe.loss(spec), optimizer, spec.schedule, placement)
    if checkpoint and checkpoint.state.scaler:
        step.scaler.load_state_dict(checkpoint.state.scaler)  # fp16 loss scale
    reduce = recipe.sum_over_processes if place.processes.world > 1 else None
    reporting = train.Reporting(progress, spec.print_every, place.device, reduce)
    mix = average = None  # -testOnly: neither trains nor is trained
    if not plan.test_only:
        outputs = checkpoints.unwrap(trained).fc.out_features
        mix = recipe.batch_mixing(spec, outputs, plan.data.seed + 2)  # its own draws
        average = recipe.weight_average(spec, trained, checkpoint)
    n_crops = plan.data.val_crops()
    evaluation = train.Evaluation(step, reporting, evaluated, n_crops=n_crops, average=average)
    every_process = recipe.step_agreement(plan.data.skip_corrupt, place.processes)
    return train.Trainer(step, evaluation, every_process=every_process, mix=mix)


def test_only_note(plan: Plan, sources) -> str | None:
    """-testOnly's warning for the training flags it ignores (sources: the -resume
    checkpoint and the -retrain file, or None)."""
    checkpoint, start_file = sources
    tested = checkpoint.model if checkpoint else start_file
    averaged = tested is not None and tested.evaluated()[1]
    return options.test_only_note(plan.options, averaged)
