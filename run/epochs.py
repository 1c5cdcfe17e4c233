"""The epoch loop of main.lua (train, test, keep the best top-1, save), made resumable at
any iteration: checkpoints every -checkpointEvery iterations and on SIGTERM / SIGINT."""

import math
import os
import signal
import sys
from dataclasses import dataclass

import checkpoints
import datasets
import errors
import train
from runtime import devices, launch, parallel, slurm


@dataclass(frozen=True)
class Loop:
    """The epochs a run trains, where it keeps them, and what its checkpoints record."""

    save: str = "checkpoints"
    resume: str = "none"
    overwrite: bool = False
    tensorboard: bool = True
    trackers: tuple[str, ...] = ()  # -logger: wandb, mlflow
    n_epochs: int = 1
    epoch_number: int = 1  # the first, when not resuming
    checkpoint_every: int = 0
    keep_checkpoints: int = 0
    precise_bn: int = 0
    evaluation: dict | None = None  # how a folder dataset's val images are prepared


class EpochLoop:
    """The Lua's epoch loop (train, test, remember the best top-1, save) made resumable:
    checkpoints every -checkpointEvery iterations and on SIGTERM / SIGINT."""

    def __init__(
        self,
        loop: Loop,
        trainer: train.Trainer,
        loaders,
        run_folder: checkpoints.RunFolder,
        network: tuple[dict, list[str], tuple[int, bool]],
        checkpoint,
        place: launch.Place,
        batch: int,
    ):
        self.loop, self.trainer, self.run_folder = loop, trainer, run_folder
        self.batch = batch  # the global batch (DataSpec.batch_size), samples per iteration
        # what the model files describe, and what is frozen (resumed with the same)
        self.arch, self.classes, self.frozen = network
        self.train_loader, self.val_loader = loaders
        self.processes, self.stop, self.devices = place.processes, place.stop, place.used
        self.scores = checkpoints.Scores()
        self.epoch, self.resume_sample, self.resume_sums = loop.epoch_number, 0, None
        self.position = (0, 0)  # (iteration, sample) the epoch being trained started at
        self.last_step = 0  # the iteration of the epoch's last step
        self.saved = checkpoint is not None  # whether the run has a checkpoint to resume
        if checkpoint:
            self.scores = checkpoint.scores
            self.resume_at(checkpoint)

    def resume_at(self, checkpoint: dict) -> None:
        """Continue after the checkpoint's epoch, or inside it at the sample it reached
        (whatever -batchSize was then), with the epoch's training sums so far."""
        if checkpoint.iteration == 0:
            self.epoch = checkpoint.epoch + 1
            return
        self.epoch = checkpoint.epoch
        check_same_order(checkpoint, datasets.order_of(self.train_loader.dataset))
        samples = checkpoint.samples
        if samples is None:  # written before samples were recorded: same -batchSize
            samples = checkpoint.iteration * self.batch
        self.resume_sample = samples
        if self.processes.rank == 0:  # the sums of every process, added up once
            self.resume_sums = checkpoint.state.epoch_sums

    def epoch_size(self) -> int:
        """Samples in an epoch's order."""
        return len(self.train_loader.dataset)

    def save(self, epoch: int, iteration: int = 0, is_best: bool = False, sums=False) -> None:
        """Checkpoint after `epoch` (iteration 0) or after an iteration inside it, with the
        epoch's training sums so far when `sums` (a collective: every process calls it at
        the same iteration, as every process calls it); only rank 0 writes (every rank
        holds the same weights), with the random generators of every rank."""
        rng = launch.all_gathered(devices.rng_state(self.devices), self.processes)
        sums = self.trainer.reporting.all_processes(self.trainer.sums.snapshot()) if sums else None
        order = datasets.order_of(self.train_loader.dataset) if iteration else None
        state = checkpoints.RunState(
            rng, self.trainer.step.scaler.state_dict(), self.frozen, sums, order
        )
        samples = 0
        if iteration:  # where in the epoch's order
            first_iteration, first_sample = self.position
            samples = first_sample + (iteration - first_iteration) * self.batch
            samples = min(samples, self.epoch_size())
        if self.processes.rank != 0:
            return
        self.saved = True
        self.run_folder()
        average = self.trainer.average.state_dict() if self.trainer.average else None
        model = self.trainer.step.model
        record = checkpoints.model_record(
            model, epoch, self.arch, self.classes, average, self.loop.evaluation
        )
        optimizer = self.trainer.step.optimizer.state_dict()
        checkpoints.save(self.loop.save, record, optimizer, scores=self.scores, is_best=is_best,
                         position=(iteration, samples), state=state,
                         keep=self.loop.keep_checkpoints)  # fmt: skip

    def after_step(self, epoch: int, iteration: int) -> None:
        """Periodic and requested mid-epoch checkpoints."""
        self.last_step = iteration
        every, stopping = self.loop.checkpoint_every, self.stop()
        if stopping or (every and iteration % every == 0):
            self.trainer.check_finite()  # never checkpoint weights a NaN has reached
            self.save(epoch, iteration, sums=True)
        if stopping:
            raise train.Interrupted(f"at epoch {epoch}, iteration {iteration}")

    def train_epoch(self, epoch: int) -> int:
        """Train one epoch, from where a resumed run stopped inside it; returns the
        epoch's last iteration."""
        first, self.resume_sample = self.resume_sample, 0
        sums, self.resume_sums = self.resume_sums, None
        self.position = (first // self.batch, first)
        if first >= self.epoch_size():  # trained before a stop during its test: test it
            return max(1, -(-first // self.batch))
        if first % self.batch:
            print(
                f"=> Resuming epoch {epoch} at image {first} (a checkpoint written with"
                f" another -batchSize)"
            )
        datasets.set_epoch(self.train_loader, epoch, first)
        self.last_step = self.position[0]
        batches = self.awaited(self.train_loader)
        try:
            self.trainer.train(
                epoch, batches, start=self.position[0], on_step=self.after_step, totals=sums
            )
        except WaitInterrupted:
            self.stop_while_waiting(epoch)
        return self.position[0] + len(self.train_loader)

    def awaited(self, loader):
        """The loader, its waits for a batch marked so that a stop request ends them at once
        (one process only: the processes of a job stop at the same iteration, together)."""
        return AwaitedBatches(loader, self.stop) if self.processes.world == 1 else loader

    def stop_while_waiting(self, epoch: int) -> None:
        """A stop request while the epoch waited for a batch: save at its last step (if it
        took one since the last checkpoint), then stop."""
        number = self.stop.signal_number
        if self.last_step > self.position[0]:
            self.trainer.check_finite()
            self.save(epoch, self.last_step, sums=True)
        elif not self.saved:
            raise errors.Stopped(number, f"waiting for epoch {epoch}'s first batch")
        raise train.Interrupted(
            f"at epoch {epoch}, iteration {self.last_step}, while waiting for data"
        )

    def evaluate(self, epoch: int) -> tuple[float, float]:
        """The test pass after an epoch (with -preciseBN's statistics first, and rank 0's
        BatchNorm buffers in every process): (top1, top5)."""
        precise_bn(self.loop, self.trainer, self.train_loader, epoch, self.batch)
        parallel.share_buffers(self.trainer.evaluation.evaluated_model(), self.processes)
        datasets.set_epoch(self.val_loader, epoch)
        return self.trainer.evaluation.test(epoch, self.awaited(self.val_loader), stop=self.stop)

    def run(self) -> None:
        """Epochs from the start (or resume) point to -nEpochs."""
        if self.epoch > self.loop.n_epochs:
            print(
                f"=> {self.loop.resume} finished epoch {self.epoch - 1} of -nEpochs"
                f" {self.loop.n_epochs}: nothing to train (raise -nEpochs to go on)"
            )
        self.stop.deferred = True  # from now on a stop request saves first
        for epoch in range(self.epoch, self.loop.n_epochs + 1):
            last = self.train_epoch(epoch)
            try:
                top1, top5 = self.evaluate(epoch)
            except Exception as exc:
                # Trained, not yet tested: keep the epoch (a resumed run tests it). After
                # a failure in one process only, the others could not join the save.
                if isinstance(exc, train.Interrupted) or self.processes.world == 1:
                    self.save(epoch, last)
                raise
            is_best = top1 < self.scores.best[0]
            self.scores = self.scores.tested(epoch, top1, top5)
            if is_best:
                top5_text = f"{top5:.14g}" if self.trainer.reporting.progress.top5 else "-"
                print(" * Best model ", f"{top1:.14g}", top5_text, sep="\t")
            self.trainer.reporting.progress.epoch_done(epoch)
            self.save(epoch, is_best=is_best)
            if self.stop():
                raise train.Interrupted(f"after epoch {epoch}")
        best = self.scores.best
        top5_text = self.trainer.reporting.progress.top5_text(best[1], 6)
        print(f" * Finished top1: {best[0]:6.3f}  top5: {top5_text}")
        if (said := finished_line(self.scores, self.loop.n_epochs)) is not None:
            print(said)


class WaitInterrupted(train.Interrupted):
    """A stop request while the loop waited for a batch."""


class AwaitedBatches:
    """A loader's batches, with stop.waiting set while the next one is awaited: a stop
    request then ends the wait (WaitInterrupted) instead of waiting for a batch that may
    never come (a hung fetch, a stalled file system). Between batches no step is half done."""

    def __init__(self, loader, stop):
        self.loader, self.stop = loader, stop

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        batches = None
        while True:
            self.stop.waiting = True
            try:
                if self.stop.requested():  # asked just before the wait: it must not begin
                    raise errors.StoppedWaiting(self.stop.signal_number)
                batches = iter(self.loader) if batches is None else batches
                batch = next(batches)
            except StopIteration:
                return
            except errors.StoppedWaiting:
                raise WaitInterrupted("while waiting for data") from None
            finally:
                self.stop.waiting = False
            yield batch


def check_same_order(checkpoint, order: str) -> None:
    """A UsageError when a checkpoint written inside an epoch was written on data stored
    otherwise (another layout, count or -shuffleBuffer): the rest of that epoch's order would
    not be the rest of the one it began, training some images twice and some never."""
    saved = checkpoint.state.order
    if saved is not None and saved != order:
        raise errors.UsageError(
            f"{checkpoint.model.path} stopped inside epoch {checkpoint.epoch}, in an order of"
            f" {saved}; this data is {order}, whose order differs: resume on the data it"
            f" stopped on (at least to the end of epoch {checkpoint.epoch}: then any layout"
            " of the same images goes on exactly)"
        )


def precise_bn(loop: Loop, trainer: train.Trainer, train_loader, epoch: int, batch: int) -> None:
    """-preciseBN N: BatchNorm statistics from N training images of epoch's order, in
    global batches of `batch`."""
    if loop.precise_bn == 0:
        return
    datasets.set_epoch(train_loader, epoch)
    batches = math.ceil(loop.precise_bn / batch)
    images = trainer.evaluation.recompute_bn_statistics(train_loader, batches)
    trainer.reporting.progress.say(
        f"=> Recomputed BatchNorm statistics on {images} training images"
    )


def test_once(loop: Loop, trainer: train.Trainer, loaders, stop, batch: int) -> int:
    """-testOnly: -preciseBN's statistics, then the val set once, with the Lua's
    ' * Results' line."""
    stop.doing = "testing"
    precise_bn(loop, trainer, loaders[0], max(loop.epoch_number, 1), batch)
    top1, top5 = trainer.evaluation.test(0, loaders[1], summary=False)
    print(f" * Results top1: {top1:6.3f}  top5: {trainer.reporting.progress.top5_text(top5, 6)}")
    return 0


def shown(loaders, print_every: int | None) -> dict:
    """What the progress shows: bars on a terminal (else the Lua's lines, about 20 a pass
    for -printFreq auto), top-5 only for more than 5 classes (with 5 or fewer it says
    nothing)."""
    bar = sys.stdout.isatty()
    thin = print_every is None and not bar
    return {"bar": bar, "top5": len(loaders[0].dataset.classes) > 5, "thin": thin}


def finished_line(scores: checkpoints.Scores, n_epochs: int) -> str | None:
    """What the Lua's ' * Finished' figure is: the best epoch's top-1 error, beside the last
    epoch's (None before any epoch was tested)."""
    if scores.last is None:
        return None
    epoch = "an epoch not recorded" if scores.best_epoch is None else f"epoch {scores.best_epoch}"
    last_epoch, last_top1 = scores.last
    return (
        f"=> best: {epoch} of {n_epochs}, top1 {scores.best[0]:.3f}; last epoch"
        f" ({last_epoch}) {last_top1:.3f}"
    )


def start_point(epoch_number: int, checkpoint) -> dict:
    """Where this part of the run starts: the epoch, and its iterations already trained."""
    if checkpoint is None:
        return {"epoch": epoch_number, "iter": 0}
    if checkpoint.iteration == 0:  # a finished epoch
        return {"epoch": checkpoint.epoch + 1, "iter": 0}
    return {"epoch": checkpoint.epoch, "iter": checkpoint.iteration}


def again(epochs: EpochLoop) -> str:
    """How to go on after a stop: the same command, with -resume unless it resumes -save."""
    resume, save = epochs.loop.resume, epochs.loop.save
    if resume != "none" and os.path.realpath(resume) == os.path.realpath(save):
        return "Run the same command again to continue"
    return f"Continue with the same command and -resume {save}"


def run_to_the_end(epochs: EpochLoop, save: str, records, requeue: slurm.Requeue) -> int:
    """Train the epochs, closing the run records however it ends. Returns the exit status:
    128 + the signal after a stop request, once the checkpoint is saved (and the SLURM job
    requeued, when the signal asks for it)."""
    finished = False
    try:
        epochs.run()
        finished = True
    except train.Interrupted as exc:
        number = epochs.stop.signal_number
        if number in requeue.signals:
            said = slurm.after_save(requeue, number, str(exc), save, epochs.processes.rank)
            if epochs.processes.rank == 0:
                print(said)
            return 128 + number
        name = signal.Signals(number).name
        print(f"=> Stopped by {name} {exc}; checkpoint saved. {again(epochs)}")
        return 128 + number
    finally:
        if records is not None:
            records.close(epochs.scores.record(), finished)
    return 0
