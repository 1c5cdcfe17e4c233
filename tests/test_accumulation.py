"""-accumSteps N: each step's batch computed in N micro-batches, the gradients summed, one
optimizer step; equal to the whole batch where no BatchNorm statistics are in play; a
distributed model all-reduces once per step."""

import pytest
import runs
import torch
import torch.distributed as dist
from test_cli import small_cifar_args
from torch import nn

import opts as options
import train
from run import plan


def network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))


def stepper(model: nn.Module, parts: int, criterion=None) -> train.Step:
    optimizer = torch.optim.SGD(model.parameters(), 0.1, momentum=0.9)
    placement = train.Placement(torch.device("cpu"), micro_batches=parts)
    return train.Step(model, criterion or nn.CrossEntropyLoss(), optimizer, lambda *_: 0.1,
                      placement)  # fmt: skip


@pytest.mark.parametrize("parts", [2, 3, 8])
@pytest.mark.parametrize("soft", [False, True])
def test_micro_batches_step_as_the_whole_batch(parts, soft):
    """Three steps on batches of 8 (3 parts: 3, 3, 2 images), labels or mixed targets with
    label smoothing: the weights, outputs and losses of the whole-batch steps."""
    whole_model, parted_model = network(), network()
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)
    whole, parted = stepper(whole_model, 1, criterion), stepper(parted_model, parts, criterion)
    generator = torch.Generator().manual_seed(1)
    for _ in range(3):
        images = torch.randn(8, 3, 8, 8, generator=generator)
        target = torch.randint(0, 10, (8,), generator=generator)
        if soft:
            target = torch.softmax(torch.randn(8, 10, generator=generator), 1)
        output, loss = whole(images, target)
        parted_output, parted_loss = parted(images, target)
        torch.testing.assert_close(parted_output, output, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(parted_loss, loss, rtol=1e-5, atol=1e-6)
    for ours, theirs in zip(parted_model.parameters(), whole_model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_a_distributed_model_all_reduces_once_per_step(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        counts = {}
        for parts in (1, 4):
            model = nn.parallel.DistributedDataParallel(network())
            calls = []

            def hook(state, bucket, calls=calls):
                calls.append(1)
                future = torch.futures.Future()
                future.set_result(bucket.buffer())
                return future

            model.register_comm_hook(None, hook)
            step = stepper(model, parts)
            for _ in range(2):
                step(torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,)))
            counts[parts] = len(calls)
    finally:
        dist.destroy_process_group()
    assert counts[4] == counts[1] > 0


def test_a_run_says_its_micro_batch_and_resumes_at_its_steps(cifar10_root, tmp_path):
    done = runs.main_run(small_cifar_args(cifar10_root, tmp_path / "run",
                                          "-nEpochs 1 -batchSize 4 -accumSteps 3"))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert (
        "=> -accumSteps 3: each step of -batchSize 4 (the global batch, the LR's) is 3"
        " micro-batches of 2 images at most" in done.stdout
    )
    assert " | Epoch: [1][5/5]" in done.stdout  # 20 images, 5 steps of 4: as without


@pytest.mark.parametrize("steps", ["0", "5"])
def test_accumulation_steps_outside_one_to_the_batch_are_refused(steps):
    with pytest.raises(options.UsageError, match="-accumSteps must be from 1 to -batchSize"):
        plan.parse(["-dataset", "cifar10", "-batchSize", "4", "-accumSteps", steps])


def test_off_is_the_step_of_before():
    """-accumSteps 1 takes the whole-batch path: bitwise the step without accumulation."""
    model, reference = network(), network()
    step = stepper(model, 1)
    optimizer = torch.optim.SGD(reference.parameters(), 0.1, momentum=0.9)
    images, labels = torch.randn(8, 3, 8, 8), torch.randint(0, 10, (8,))
    step(images, labels)
    nn.functional.cross_entropy(reference(images), labels).backward()
    optimizer.step()
    pairs = zip(model.parameters(), reference.parameters(), strict=True)
    assert all(torch.equal(ours, theirs) for ours, theirs in pairs)
