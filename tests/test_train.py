"""train.py against the Lua's train.lua: scores, the loop and its lines."""

import json
import os

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from trainers import cpu_trainer

import train
from progress import Progress, RunRecords


def percent_wrong(output, target, n_crops=1) -> list[float]:
    """Top-1 and top-5 error in percent from train.count_wrong's counts."""
    return (train.count_wrong(output, target, n_crops) * 100.0 / target.shape[0]).tolist()


def test_count_wrong_against_hand_made_logits():
    output = torch.tensor(
        [
            [9.0, 1, 2, 3, 4, 5, 6],  # target 0: top-1 hit
            [1.0, 9, 8, 7, 6, 5, 0],  # target 5: rank 5, top-5 hit
            [1.0, 9, 8, 7, 6, 5, 0],  # target 6: miss
            [0.0, 1, 2, 3, 4, 5, 9],  # target 5: rank 2
        ]
    )
    target = torch.tensor([0, 5, 6, 5])
    top1, top5 = percent_wrong(output, target)
    assert top1 == pytest.approx(75.0) and top5 == pytest.approx(25.0)


def test_top5_is_guarded_below_five_classes():
    output = torch.tensor([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7]])
    top1, top5 = percent_wrong(output, torch.tensor([1, 1, 1]))
    assert top1 == pytest.approx(100 / 3) and top5 == 0.0


def test_ten_crop_scores_sum_the_logits_of_each_image():
    # Image 0: crops disagree, but the sum favours class 2; image 1: sum favours class 0.
    crops0 = torch.zeros(10, 3)
    crops0[:6, 1] = 1.0
    crops0[6:, 2] = 2.0
    crops1 = torch.zeros(10, 3)
    crops1[:, 0] = 1.0
    output = torch.cat([crops0, crops1])
    top1, _ = percent_wrong(output, torch.tensor([2, 0]), n_crops=10)
    assert top1 == 0.0
    top1, _ = percent_wrong(output, torch.tensor([1, 0]), n_crops=10)
    assert top1 == 50.0


class Memorizer(nn.Module):
    """A linear model over flattened pixels: enough to learn and to check the loop."""

    def __init__(self, n_classes=3):
        super().__init__()
        self.fc = nn.Linear(3 * 4 * 4, n_classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


def make_trainer(model, lines, n_crops=1, lr=0.5):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True)
    return cpu_trainer(model, optimizer, lambda epoch, progress: lr / epoch, log=lines.append,
                       n_crops=n_crops)  # fmt: skip


def batches(images, labels, size):
    return [(images[i : i + size], labels[i : i + size]) for i in range(0, len(labels), size)]


def test_train_prints_the_lua_lines_and_sets_the_lr():
    torch.manual_seed(0)
    images, labels = torch.randn(10, 3, 4, 4), torch.tensor([0, 1, 2] * 3 + [0])
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    top1, top5, loss = trainer.train(2, batches(images, labels, 4))
    assert trainer.step.optimizer.param_groups[0]["lr"] == 0.25
    assert lines[0] == "=> Training epoch # 2"
    assert len(lines) == 4
    pattern = r" \| Epoch: \[2\]\[3/3\]    Time \d+\.\d{3}  Data \d+\.\d{3}  Err \d\.\d{4}  top1 [ \d]{3}\.\d{3}  top5 [ \d]{3}\.\d{3}"
    assert __import__("re").fullmatch(pattern, lines[3])
    assert 0 <= top1 <= 100 and top5 == 0.0 and loss > 0


def test_training_learns_and_test_weights_errors_per_image():
    torch.manual_seed(0)
    images, labels = torch.randn(10, 3, 4, 4), torch.tensor([0, 1, 2] * 3 + [0])
    lines = []
    trainer = make_trainer(Memorizer(), lines, lr=0.2)
    for _ in range(30):
        trainer.train(1, batches(images, labels, 4))
    lines.clear()
    top1, top5 = trainer.evaluation.test(7, batches(images, labels, 4))
    assert top1 == 0.0 and top5 == 0.0
    # With one wrong label in the partial last batch (2 images), the error is 1/10 per image.
    wrong = labels.clone()
    wrong[9] = 2 if trainer.step.model(images[9:]).argmax().item() != 2 else 1
    lines.clear()
    top1, _ = trainer.evaluation.test(7, batches(images, wrong, 4))
    assert top1 == pytest.approx(10.0)
    assert lines[-1] == " * Finished epoch # 7     top1:  10.000  top5:   0.000\n"
    assert lines[2].startswith(" | Test: [7][3/3]    Time ") and lines[2].endswith(
        "top1  50.000 ( 10.000)  top5   0.000 (  0.000)"
    )


def test_ten_crop_batches_are_flattened_for_the_model():
    torch.manual_seed(0)
    lines = []
    trainer = make_trainer(Memorizer(), lines, n_crops=10)
    crops = torch.randn(2, 10, 3, 4, 4)
    top1, _ = trainer.evaluation.test(0, [(crops, torch.tensor([0, 1]))])
    expected, _ = percent_wrong(trainer.step.model(crops.flatten(0, 1)), torch.tensor([0, 1]), 10)
    assert top1 == expected


def test_a_nan_loss_stops_training_with_a_message():
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    images = torch.full((2, 3, 4, 4), float("nan"))
    with pytest.raises(FloatingPointError, match="lower -LR"):
        trainer.train(1, [(images, torch.tensor([0, 1]))])


def test_sgd_matches_the_lua_nesterov_update():
    """optim.sgd: d = g + wd*x; buf = d (first) then mom*buf + d; x -= lr * (d + mom*buf)."""
    torch.manual_seed(0)
    x = torch.randn(5, requires_grad=True)
    optimizer = torch.optim.SGD(
        [x], lr=0.1, momentum=0.9, dampening=0, weight_decay=1e-4, nesterov=True
    )
    expected, buf = x.detach().clone(), None
    for _ in range(3):
        optimizer.zero_grad()
        (x**2).sum().backward()
        d = 2 * expected + 1e-4 * expected
        buf = d.clone() if buf is None else 0.9 * buf + d
        expected = expected - 0.1 * (d + 0.9 * buf)
        optimizer.step()
    torch.testing.assert_close(x.detach(), expected)


class HostReads(TorchDispatchMode):
    """Counts reads of a single tensor value by the host (.item(), bool(), float())."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += func is torch.ops.aten._local_scalar_dense.default
        return func(*args, **(kwargs or {}))


def test_the_hot_loop_reads_the_device_only_to_print(monkeypatch):
    torch.manual_seed(0)
    images, labels = torch.randn(40, 3, 4, 4), torch.randint(0, 3, (40,))
    reads = []
    monkeypatch.setattr(train, "to_host", lambda t: reads.append(1) or t.tolist())
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    trainer.reporting.print_every = 4
    with HostReads() as host:
        trainer.train(1, batches(images, labels, 4))  # 10 iterations
        trainer.evaluation.test(1, batches(images, labels, 4))
    assert host.count == 0
    printed = [line for line in lines if line.startswith(" | ")]
    assert len(reads) == len(printed) == 6  # train and test lines at 4, 8 and 10
    assert [line.split("]")[1] for line in printed[:3]] == ["[4/10", "[8/10", "[10/10"]


def test_a_printed_line_averages_its_window_and_the_total_is_per_image():
    torch.manual_seed(0)
    images, labels = torch.randn(10, 3, 4, 4), torch.tensor([0, 1, 2] * 3 + [0])
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    trainer.reporting.print_every = 2
    parts = batches(images, labels, 4)  # 4 + 4 + 2 images
    expected = [percent_wrong(trainer.step.model(x), y) for x, y in parts]
    top1, top5 = trainer.evaluation.test(3, parts)
    first = 0.5 * (expected[0][0] + expected[1][0])
    assert lines[0].endswith(f"top1 {first:7.3f} ({first:7.3f})  top5   0.000 (  0.000)")
    assert top1 == pytest.approx(
        (4 * expected[0][0] + 4 * expected[1][0] + 2 * expected[2][0]) / 10
    )
    assert lines[1].startswith(" | Test: [3][3/3]") and top5 == 0.0


def test_a_nan_reaching_the_weights_is_caught_before_a_checkpoint():
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    trainer.reporting.print_every = 100
    images = torch.full((2, 3, 4, 4), float("nan"))
    seen = []

    def before_checkpoint(epoch, n):
        seen.append(n)
        trainer.check_finite()

    with pytest.raises(FloatingPointError, match="not finite"):
        trainer.train(1, [(images, torch.tensor([0, 1]))] * 3, on_step=before_checkpoint)
    assert seen == [1]


def test_records_get_every_printed_step_and_each_pass(tmp_path):
    torch.manual_seed(0)
    images, labels = torch.randn(10, 3, 4, 4), torch.tensor([0, 1, 2] * 3 + [0])
    records, lines = [], []
    trainer = make_trainer(Memorizer(), lines)
    trainer.reporting.progress = Progress(lines.append, record=records.append)
    trainer.reporting.print_every = 2
    top1, _, loss = trainer.train(2, batches(images, labels, 4))  # lines at 2 and 3
    trainer.evaluation.test(2, batches(images, labels, 4))
    assert [(r["split"], r["iter"]) for r in records] == [
        ("train", 2),
        ("train", 3),
        ("train", None),
        ("val", 2),
        ("val", 3),
        ("val", None),
    ]
    assert records[2]["top1"] == top1 and records[2]["loss"] == loss and records[0]["lr"] == 0.25
    assert records[0]["img_s"] > 0 and 0 <= records[0]["data_share"] <= 1
    assert len([line for line in lines if line.startswith(" | ")]) == 4  # plain lines too


def test_run_records_append_json_lines_and_tensorboard_scalars(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for run in range(2):  # a resumed run appends
        records = RunRecords(str(tmp_path), 10, options={"LR": 0.1})
        records({"epoch": 1 + run, "iter": 5, "split": "train", "loss": 2.5, "top1": 80.0,
                 "top5": 40.0, "lr": 0.1, "img_s": 100.0, "data_share": 0.25})  # fmt: skip
        records({"epoch": 1 + run, "iter": None, "split": "val", "top1": 70.0, "top5": 30.0})
        records.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["epoch"], r["split"], r["iter"]) for r in lines] == [
        (1, "train", 5),
        (1, "val", None),
        (2, "train", 5),
        (2, "val", None),
    ]
    assert all(r["seconds"] >= 0 for r in lines)
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert [(e.step, e.value) for e in events.Scalars("train/loss")] == [(5, 2.5), (15, 2.5)]
    assert [e.step for e in events.Scalars("epoch/val_top1")] == [1, 2]
    assert "options/text_summary" in events.Tags()["tensors"]


def test_records_can_leave_tensorboard_out(tmp_path):
    records = RunRecords(str(tmp_path), 10, tensorboard=False)
    records({"epoch": 1, "iter": None, "split": "val", "top1": 1.0, "top5": 0.0})
    assert sorted(os.listdir(tmp_path)) == ["metrics.jsonl"]


def bn_network():
    """conv -> BN -> classifier: a BatchNorm whose input statistics are easy to recompute."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(64, 3))


def shifted_batches(seed, count=5, size=4):
    """Batches whose pixel statistics differ from batch to batch."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, 3, 4, 4, generator=generator) * (k + 1) + k,
             torch.randint(0, 3, (size,), generator=generator)) for k in range(count)]  # fmt: skip


def batch_statistics(model, data):
    """Each batch's per-channel mean and unbiased variance at the BatchNorm's input."""
    with torch.no_grad():
        features = [model[0](images) for images, _ in data]
    means = torch.stack([f.mean((0, 2, 3)) for f in features])
    variances = torch.stack([f.transpose(0, 1).flatten(1).var(1) for f in features])
    return means, variances


def test_precise_bn_sets_running_statistics_to_their_average_over_the_batches():
    model, data = bn_network(), shifted_batches(0)
    trainer = make_trainer(model, [])
    trainer.train(1, data)  # running statistics: a momentum 0.1 moving average
    weights = {k: v.clone() for k, v in model.named_parameters()}
    means, variances = batch_statistics(model, data[:3])
    assert trainer.evaluation.recompute_bn_statistics(data, batches=3) == 12
    norm = model[1]
    torch.testing.assert_close(norm.running_mean, means.mean(0))
    torch.testing.assert_close(norm.running_var, variances.mean(0))
    assert norm.momentum == 0.1 and norm.training and int(norm.num_batches_tracked) == 3
    assert all(torch.equal(parameter, weights[k]) for k, parameter in model.named_parameters())


def test_precise_bn_weighs_each_process_by_its_images():
    import threading

    class TwoProcesses:
        """all_reduce(SUM) between two threads standing for two processes."""

        def __init__(self):
            self.barrier, self.lock, self.parts = threading.Barrier(2), threading.Lock(), []

        def __call__(self, values):
            with self.lock:
                self.parts.append(values.clone())
            self.barrier.wait()
            total = self.parts[0] + self.parts[1]
            if self.barrier.wait() == 0:  # one thread clears, once both have read
                self.parts.clear()
            self.barrier.wait()
            return total

    reduce = TwoProcesses()
    shares = [shifted_batches(1, count=3, size=4), shifted_batches(2, count=3, size=2)]
    models = [bn_network(), bn_network()]
    trainers = [make_trainer(model, []) for model in models]
    for trainer in trainers:
        trainer.reporting.reduce = reduce
    used = [None, None]
    threads = [threading.Thread(target=lambda r=r: used.__setitem__(
        r, trainers[r].evaluation.recompute_bn_statistics(shares[r], batches=3))) for r in (0, 1)]  # fmt: skip
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert used == [18, 18]  # images of both processes
    per_process = [batch_statistics(models[0], share) for share in shares]
    expected_mean = (per_process[0][0].mean(0) * 12 + per_process[1][0].mean(0) * 6) / 18
    expected_var = (per_process[0][1].mean(0) * 12 + per_process[1][1].mean(0) * 6) / 18
    for model in models:
        torch.testing.assert_close(model[1].running_mean, expected_mean)
        torch.testing.assert_close(model[1].running_var, expected_var)


class SlowLoader:
    """Batches that take far longer to produce (real work, a large matrix product) than a
    Memorizer step takes to train on them."""

    def __init__(self, count):
        self.count, self.work = count, torch.randn(400, 400)

    def __len__(self):
        return self.count

    def __iter__(self):
        for k in range(self.count):
            for _ in range(5):
                self.work = torch.tanh(self.work @ self.work)
            yield torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, k % 3])


def test_an_input_bound_epoch_is_named_once():
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    trainer.train(1, SlowLoader(60))
    trainer.train(2, SlowLoader(60))
    warnings = [line for line in lines if "input-bound" in line]
    assert len(warnings) == 1, lines
    assert __import__("re").fullmatch(
        r" \| warning: input-bound: \d+% of epoch 1 went to waiting for data; more loader"
        r" workers \(-nThreads\), faster storage or -decodeOnDevice would help",
        warnings[0],
    )


def test_a_fast_loader_or_a_short_epoch_gets_no_input_bound_warning():
    lines = []
    trainer = make_trainer(Memorizer(), lines)
    data = batches(torch.randn(240, 3, 4, 4), torch.randint(0, 3, (240,)), 4)
    trainer.train(1, data)  # 60 batches already in memory
    trainer.train(2, SlowLoader(10))  # too short to tell start-up from a slow loader
    assert not any("input-bound" in line for line in lines)


def test_a_stop_while_testing_says_so_in_words():
    images, labels = torch.randn(8, 3, 4, 4), torch.tensor([0, 1, 2, 0] * 2)
    trainer = make_trainer(Memorizer(), [])
    with pytest.raises(train.Interrupted) as caught:
        trainer.evaluation.test(3, batches(images, labels, 4), stop=lambda: True)
    assert str(caught.value) == "while testing epoch 3"  # "Stopped by SIGTERM while testing ..."


def test_records_create_nothing_before_the_first_record(tmp_path):
    opened = []
    folder = tmp_path / "save"
    records = RunRecords(str(folder), 10, before_first_write=lambda: opened.append(1) or
                               folder.mkdir())  # fmt: skip
    assert not folder.exists() and opened == []
    records({"epoch": 1, "iter": None, "split": "val", "top1": 1.0, "top5": 0.0})
    records({"epoch": 2, "iter": None, "split": "val", "top1": 1.0, "top5": 0.0})
    records.close()
    assert opened == [1] and sorted(os.listdir(folder)) == ["metrics.jsonl", "tb"]


def test_the_step_alone_is_one_sgd_step_in_its_precision_and_layout():
    torch.manual_seed(0)
    model, twin = Memorizer(), Memorizer()
    twin.load_state_dict(model.state_dict())
    step = train.Step(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=1.0),
                      lambda epoch, progress: 0.25 / epoch,
                      train.Placement(torch.device("cpu"), torch.channels_last, torch.float64))  # fmt: skip
    model.double()
    assert step.set_learning_rate(2) == 0.125
    images, target = step.to_device((torch.randn(4, 3, 4, 4), torch.tensor([0, 1, 2, 0])))
    assert images.dtype == torch.float64 and images.is_contiguous(memory_format=torch.channels_last)
    output, loss = step(images, target)
    expected = nn.functional.cross_entropy(twin.double()(images), target)
    expected.backward()
    assert loss.item() == pytest.approx(expected.item())
    for trained, by_hand in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.allclose(trained, by_hand - 0.125 * by_hand.grad)


def test_the_evaluation_alone_counts_the_errors_of_the_model_it_is_given():
    model = Memorizer()
    step = train.Step(model, nn.CrossEntropyLoss(), torch.optim.SGD(model.parameters(), lr=0.1),
                      lambda *_: 0.1, train.Placement(torch.device("cpu")))  # fmt: skip
    lines = []
    reporting = train.Reporting(Progress(lines.append), 1, torch.device("cpu"))
    other = Memorizer()
    evaluation = train.Evaluation(step, reporting, other)
    images = torch.randn(6, 3, 4, 4)
    labels = other(images).argmax(1)
    labels[:2] = (labels[:2] + 1) % 3  # two of six wrong for the evaluated model
    top1, _ = evaluation.test(1, batches(images, labels, 4))
    assert top1 == pytest.approx(100 * 2 / 6) and evaluation.evaluated_model() is other
    assert lines[-1].startswith(" * Finished epoch # 1     top1:  33.333")
