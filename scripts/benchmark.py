"""Training speed on this machine, as ratios measured in one run, each printed beside the
project's target for it (docs/performance.md gives the targets and measured results).

  python scripts/benchmark.py [--model resnet20|resnet18|resnext50] [--batch N] [--steps N]
                              [--rounds N]
  python scripts/benchmark.py --recipes [--batch N]   (ResNet-18 on JPEGs: default flags
                                                       against -recipe torchvision)

Each measurement runs in a fresh process (clean peak RSS, no shared caches) with the tool's
-hostAllocator (cache unless the row says system; the baseline keeps the C library's
default) and reports the median img/s over --steps timed iterations after --warmup ones;
the rows are measured in turn, --rounds times, and the table gives each row's median:
  bare      model + SGD on synthetic tensors already in memory (the ceiling)
  trainer   the tool's Trainer on the in-memory loader (whole-batch augmentation)
  pipeline  the in-memory augmentation alone, on one thread
  baseline  what pytorch/examples does: fp32, contiguous, per-image torchvision
            transforms in a 2-worker DataLoader
  reference the img/s this model would train at if every FLOP of its training step
            (counted by torch.utils.flop_counter) ran at the fp32 speed of a large
            channels_last convolution on this CPU: roughly what an fp32 schedule can reach
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import models  # noqa: E402
import train  # noqa: E402
from datasets import cifar  # noqa: E402
from datasets.cifar import ArrayImageDataset  # noqa: E402
from datasets.memory import InMemoryLoader  # noqa: E402
from progress import Progress  # noqa: E402
from run import layouts  # noqa: E402
from runtime import devices, launch  # noqa: E402

MODELS = {  # name -> (create() arguments, image size)
    "resnet20": (("resnet", 20, "cifar10"), 32),
    "resnet18": (("resnet", 18, "imagenet"), 224),
    "resnext50": (("resnext", 50, "imagenet", {"cardinality": 32, "baseWidth": 4}), 64),
}
LAYOUTS = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
MEAN, STD = cifar.MEANSTD["cifar10"]  # the 32-pixel networks' data


def build(name: str, size: int | None = None, optnet: bool = False):
    """The model (with activation checkpointing for -optnet) and its input size."""
    args, default_size = MODELS[name]
    kwargs = args[3] if len(args) > 3 else {}
    torch.manual_seed(0)
    model = models.create(*args[:3], **kwargs)
    models.set_activation_checkpointing(model, optnet)
    return model, size or default_size


def synthetic_dataset(n: int, size: int, n_classes: int) -> ArrayImageDataset:
    """Random uint8 images with labels, shaped as an in-memory dataset."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, n_classes, (n,), generator=generator)
    classes = [str(i) for i in range(n_classes)]
    return ArrayImageDataset(images, labels, classes, None, (MEAN, STD))


def timed(step, warmup: int, steps: int, device: str = "cpu") -> float:
    """Median seconds per call of step() after warmup calls (the device's queued work
    included)."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        devices.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def median_gap(stamps: list[float], warmup: int) -> float:
    """The median time between consecutive stamps, the first `warmup` gaps left out."""
    return statistics.median(
        b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1 :], strict=False)
    )


def measure_bare(model, size, batch, layout, precision, warmup, steps, device="cpu") -> float:
    """Seconds per step of the bare loop (synthetic tensors already on the device)."""
    model = model.to(device, memory_format=LAYOUTS[layout])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    images = torch.randn(batch, 3, size, size, device=device)
    images = images.contiguous(memory_format=LAYOUTS[layout])
    target = torch.randint(0, model.fc.out_features, (batch,), device=device)
    kind = torch.device(device).type

    def step():
        with torch.autocast(
            kind, dtype=PRECISIONS[precision] or torch.float32, enabled=precision != "fp32"
        ):
            loss = torch.nn.functional.cross_entropy(model(images).float(), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed(step, warmup, steps, device)


def measure_trainer(model, size, batch, layout, precision, warmup, steps, device="cpu") -> float:
    """Seconds per iteration of Trainer.train over the in-memory loader (lines not printed;
    augmentation on the device)."""
    model = model.to(device, memory_format=LAYOUTS[layout])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    placement = train.Placement(
        torch.device(device), LAYOUTS[layout], autocast_dtype=PRECISIONS[precision]
    )
    step = train.Step(model, torch.nn.CrossEntropyLoss(), optimizer, lambda *_: 0.01, placement)
    trainer = train.trainer_of(step, Progress(lambda line: None))
    data = synthetic_dataset(batch * (warmup + steps), size, model.fc.out_features)
    loader = InMemoryLoader(data, batch, seed=0, train=True, device=device)
    stamps = []

    def stamp(*_):
        devices.synchronize(device)
        stamps.append(time.perf_counter())

    trainer.train(1, loader, on_step=stamp)
    return median_gap(stamps, warmup)


def measure_pipeline(size, batch, warmup, steps, policy: bool = False) -> float:
    """Seconds per batch of the in-memory augmentation alone, on one thread; with policy,
    also -autoAugment ta_wide -randomErasing 0.1 (one image at a time)."""
    from datasets import policies

    data = synthetic_dataset(batch * 64, size, 10)
    augment = policies.ImageAugment("ta_wide", 0.1) if policy else None
    loader = InMemoryLoader(data, batch, seed=0, train=True, augment=augment)
    batches = iter(loader)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return timed(lambda: next(batches), warmup, steps)
    finally:
        torch.set_num_threads(threads)


def jpeg_files(folder: str, count: int = 32) -> list[str]:
    """Real ImageNet JPEGs from the test suite's foolbox wheel when it is in .cache/, else
    ImageNet-sized ones (500 x 375, quality 90) of smooth random content, written once."""
    import glob
    import zipfile

    from PIL import Image

    wheels = glob.glob(os.path.join(ROOT, ".cache", "foolbox-3.3.4-*.whl"))
    if wheels:
        with zipfile.ZipFile(wheels[0]) as wheel:
            names = [n for n in wheel.namelist() if n.startswith("foolbox/data/imagenet_")]
            wheel.extractall(folder + "-real", names)
        return sorted(glob.glob(os.path.join(folder + "-real", "foolbox", "data", "*.jpg")))
    os.makedirs(folder, exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    paths = []
    for i in range(count):
        path = os.path.join(folder, f"{i}.jpg")
        if not os.path.exists(path):
            coarse = torch.randint(0, 256, (3, 24, 32), dtype=torch.uint8, generator=generator)
            smooth = torch.nn.functional.interpolate(
                coarse[None].float(), (375, 500), mode="bicubic"
            )
            pixels = smooth[0].clamp(0, 255).byte().permute(1, 2, 0).numpy()
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(path)
    return paths


def measure_jpeg(decode_only: bool, warmup: int, steps: int) -> float:
    """Seconds per image on one thread: JPEG decode alone (PIL, whole image, RGB), or the
    tool's ImageNet train pipeline: the worker half (RandomSizedCrop with draft decoding,
    colour draws, flip, as uint8) and the batch finishing (ColorJitter, Lighting,
    normalise) of datasets/photometric.py, for a batch of every file."""
    from PIL import Image

    from datasets import decoding, folder_samples, imagenet

    paths = jpeg_files(os.path.join(ROOT, ".cache", "benchmark-jpegs"))
    worker, finishing = folder_samples.TrainSample(), imagenet.finish_on(None, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)

    def batch():
        if decode_only:
            for path in paths:
                decoding.load_rgb(path)
            return
        samples = []
        for path in paths:
            with Image.open(path) as image:
                samples.append(worker(image, generator))
        crops, draws = (torch.stack(parts) for parts in zip(*samples, strict=True))
        finishing.finish(crops, draws)

    try:
        return timed(batch, warmup, steps) / len(paths)
    finally:
        torch.set_num_threads(threads)


def data_tree(copies: int = 8) -> tuple[str, str, str]:
    """(folder, shards, parquet) of the same real JPEGs, written once under .cache/: train/
    holds each benchmark JPEG `copies` times in two classes; the shards are make_shards.py's,
    the parquet files in the Hub's layout (images embedded, row groups of 16)."""
    import shutil

    root = os.path.join(ROOT, ".cache", "benchmark-data")
    folder, shards, parquet = (os.path.join(root, name) for name in ("folder", "shards", "hub"))
    if os.path.exists(os.path.join(parquet, "data")):
        return folder, shards, parquet
    shutil.rmtree(root, ignore_errors=True)
    paths = jpeg_files(os.path.join(ROOT, ".cache", "benchmark-jpegs"))
    for split, count in (("train", copies), ("val", 1)):
        for n, path in enumerate(paths * count):
            target = os.path.join(folder, split, "ab"[n % 2], f"{n:05d}.jpg")
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(path, target)
    script = os.path.join(ROOT, "scripts", "make_shards.py")
    subprocess.run([sys.executable, script, folder, shards, "--shard-size", "64"],
                   check=True, capture_output=True)  # fmt: skip
    write_parquet(folder, os.path.join(parquet, "data"))
    return folder, shards, parquet


def write_parquet(folder: str, target: str, rows_per_group: int = 16) -> None:
    """A class-folder tree as the Hub's parquet files: data/<split>-00000-of-00001.parquet
    with an image column {bytes, path} and a label column, class names in its metadata."""
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    classes = sorted(os.listdir(os.path.join(folder, "train")))
    features = {"image": {"_type": "Image"}, "label": {"names": classes, "_type": "ClassLabel"}}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    os.makedirs(target, exist_ok=True)
    for split, hub in (("train", "train"), ("val", "validation")):
        images, labels = [], []
        for label, name in enumerate(classes):
            for file in sorted(os.listdir(os.path.join(folder, split, name))):
                with open(os.path.join(folder, split, name, file), "rb") as handle:
                    images.append({"bytes": handle.read(), "path": file})
                labels.append(label)
        table = pa.table({"image": images, "label": labels}).replace_schema_metadata(metadata)
        path = os.path.join(target, f"{hub}-00000-of-00001.parquet")
        pq.write_table(table, path, row_group_size=rows_per_group)


def measure_data(source: str, batch: int, warmup: int, steps: int, workers: int = 2) -> float:
    """Seconds per batch of the ImageNet train split's loader (decode and augment in
    `workers` processes, as -nThreads), reading the class folders, the tar shards (also as
    fetched by `pipe:cat` into a spool) or the parquet files (the last two shuffled in
    windows of 64 images: 4 row groups, or a shard or two)."""
    import tempfile

    import datasets
    from datasets import imagenet

    folder, shards, parquet = data_tree()
    data = {"folder": folder, "shards": shards, "fetched": shards, "parquet": parquet}[source]
    fetched = f"pipe:cat {shards}/{{shard}}" if source == "fetched" else ""
    with tempfile.TemporaryDirectory() as gen:
        window = 64 if source in ("fetched", "parquet") else imagenet.LOCAL.window
        storage = imagenet.Storage(window=window, shard_source=fetched)
        dataset = datasets.load(
            "imagenet", "train", data=data, gen=gen, reading=imagenet.Reading(storage=storage)
        )
        loader = datasets.make_loader(dataset, batch, workers=workers, seed=0, train=True)
        stamps, epoch = [], 1
        while len(stamps) < warmup + steps + 1:
            loader.sampler.set_epoch(epoch)
            for _ in loader:
                stamps.append(time.perf_counter())
            epoch += 1
        datasets.close(loader)
    return median_gap(stamps, warmup)


class JpegBatches:
    """Training batches made on the fly, in this process, by the tool's folder pipeline
    (worker half, then the finishing) from the benchmark's JPEGs, cycled."""

    def __init__(self, worker, batch: int, count: int):
        from datasets import imagenet

        self.paths = jpeg_files(os.path.join(ROOT, ".cache", "benchmark-jpegs"))
        self.worker, self.batch, self.count = worker, batch, count
        self.finishing = imagenet.finish_on(None, torch.device("cpu"))
        self.generator = torch.Generator().manual_seed(0)

    def __len__(self) -> int:
        return self.count

    def __iter__(self):
        from PIL import Image

        for number in range(self.count):
            samples = []
            for i in range(self.batch):
                path = self.paths[(number * self.batch + i) % len(self.paths)]
                with Image.open(path) as image:
                    samples.append(self.worker(image, self.generator))
            crops, draws = (torch.stack(parts) for parts in zip(*samples, strict=True))
            labels = torch.arange(self.batch) % 1000
            yield self.finishing.finish(crops, draws), labels


def measure_jpeg_training(
    recipe: bool, batch: int, warmup: int, steps: int, crop: int = 176
) -> float:
    """Seconds per iteration of ResNet-18 training on JPEGs, the pipeline included (one
    process, no loader workers: their cost is counted, not hidden by overlap), with the
    default flags or with -recipe torchvision's per-step work: 176 crops, TrivialAugmentWide,
    random erasing, mixup / cutmix, label smoothing, and the EMA updated at every step (the
    recipe: every 32, so this is an upper bound of its cost); crop: the recipe's training
    crop (176; 224 to see the cost of the rest alone)."""
    from datasets import folder_samples, mixing, policies
    from recipe import averaging

    torch.manual_seed(0)
    model = models.create("resnet", 18, "imagenet").to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)
    extra, worker = {}, folder_samples.TrainSample(224)
    if recipe:
        augment = policies.ImageAugment("ta_wide", 0.1, folder_samples.FOLDER_SPACE)
        worker = folder_samples.TrainSample(crop, augment=augment)
        extra = {
            "mix": mixing.BatchMixing(1000, mixup=0.2, cutmix=1.0),
            "average": averaging.ExponentialAverage(model, 0.999966, every=1),
        }
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1 if recipe else 0.0)
    placement = train.Placement(torch.device("cpu"), torch.channels_last)
    step = train.Step(model, criterion, optimizer, lambda *_: 0.01, placement)
    trainer = train.trainer_of(step, Progress(lambda line: None), **extra)
    stamps = []
    loader = JpegBatches(worker, batch, warmup + steps + 1)
    trainer.train(1, loader, on_step=lambda epoch, n: stamps.append(time.perf_counter()))
    return median_gap(stamps, warmup)


def convolution_backward_flops(grad_out_shape, x_shape, w_shape, *schema, out_shape=None, **_):
    """FLOPs of aten.convolution_backward (not transposed): each gradient it computes costs
    what the forward convolution did. torch 2.14's own formula counts a grouped
    convolution's weight gradient as if it were ungrouped (fixed by pytorch/pytorch#183405).
    schema: the op's bias sizes, stride, padding, dilation, transposed, output padding,
    groups and output mask, in its order."""
    from torch.utils.flop_counter import conv_flop_count

    output_mask = schema[7]
    forward = conv_flop_count(list(x_shape), list(w_shape), list(grad_out_shape))
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def training_flops_per_image(model, size: int) -> float:
    """FLOPs of one training step's forward and backward, per image."""
    from torch.utils.flop_counter import FlopCounterMode

    images = torch.zeros(2, 3, size, size)
    target = torch.zeros(2, dtype=torch.long)
    fixed = {torch.ops.aten.convolution_backward: convolution_backward_flops}
    counter = FlopCounterMode(display=False, custom_mapping=fixed)
    with counter:
        torch.nn.functional.cross_entropy(model(images), target).backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() / len(images)


def conv_peak_flop_s(warmup: int, steps: int) -> float:
    """FLOP/s of a 3x3, 256-channel convolution at 28x28, batch 32, fp32 channels_last:
    the rate oneDNN reaches on this CPU's vector units when nothing else is in the way."""
    conv = torch.nn.Conv2d(256, 256, 3, padding=1, bias=False)
    conv = conv.to(memory_format=torch.channels_last)
    images = torch.randn(32, 256, 28, 28).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        seconds = timed(lambda: conv(images), warmup, steps)
    return 2 * 32 * 256 * 256 * 9 * 28 * 28 / seconds


def measure_baseline(model, size, batch, warmup, steps) -> float:
    """Seconds per step: fp32 contiguous, per-image torchvision transforms, 2 workers."""
    from torchvision import transforms as tv

    data = synthetic_dataset(batch * (warmup + steps + 2), size, model.fc.out_features)
    transform = tv.Compose(
        [
            tv.RandomCrop(size, padding=4),
            tv.RandomHorizontalFlip(),
            tv.ConvertImageDtype(torch.float32),
            tv.Normalize([m / 255 for m in MEAN], [s / 255 for s in STD]),
        ]
    )
    per_image = [(data.images[i], int(data.labels[i])) for i in range(len(data.labels))]

    class PerImage(torch.utils.data.Dataset):
        def __len__(self):
            return len(per_image)

        def __getitem__(self, i):
            return transform(per_image[i][0]), per_image[i][1]

    loader = iter(torch.utils.data.DataLoader(PerImage(), batch, shuffle=True, num_workers=2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True)

    def step():
        images, target = next(loader)
        loss = torch.nn.functional.cross_entropy(model(images), target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return timed(step, warmup, steps)


def run_one(spec: dict) -> dict:
    """One measurement, in this process."""
    batch, warmup, steps = spec["batch"], spec["warmup"], spec["steps"]
    launch.configure_host_allocator("system" if spec["kind"] == "baseline" else spec["allocator"])
    if spec["kind"] in ("jpeg_decode", "jpeg_pipeline"):
        seconds = measure_jpeg(spec["kind"] == "jpeg_decode", warmup, steps)
        return {
            "img_s": 1 / seconds,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
    if spec["kind"] in ("data_folder", "data_shards", "data_fetched", "data_parquet"):
        source = spec["kind"].split("_")[1]
        seconds = measure_data(source, batch, warmup, steps, spec.get("workers", 2))
    elif spec["kind"] in ("jpeg_train", "jpeg_train_recipe"):
        recipe = spec["kind"] == "jpeg_train_recipe"
        seconds = measure_jpeg_training(recipe, batch, warmup, steps, spec.get("crop", 176))
    elif spec["kind"] in ("pipeline", "pipeline_policy"):
        size = spec.get("size") or MODELS[spec["model"]][1]
        seconds = measure_pipeline(size, batch, warmup, steps, spec["kind"] == "pipeline_policy")
    else:
        model, size = build(spec["model"], spec.get("size"), spec.get("optnet", False))
        if spec["kind"] == "reference":
            flops = training_flops_per_image(model, size)
            seconds = batch * flops / conv_peak_flop_s(warmup, steps)
        elif spec["kind"] == "baseline":
            seconds = measure_baseline(model, size, batch, warmup, steps)
        else:
            measure = measure_bare if spec["kind"] == "bare" else measure_trainer
            layout, precision = spec["layout"], spec["precision"]
            seconds = measure(model, size, batch, layout, precision, warmup, steps)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"img_s": batch / seconds, "peak_rss_mib": peak_kib / 1024}


def measure(spec: dict) -> dict:
    """run_one in a fresh interpreter."""
    command = [sys.executable, os.path.abspath(__file__), "--one", json.dumps(spec)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure_rounds(specs: dict[str, dict], rounds: int) -> dict[str, dict]:
    """Every spec once per round, round after round, so that the machine's drift over the
    run falls on every row alike; the median img/s and peak RSS of each, and the img/s range."""
    runs = {label: [] for label in specs}
    for round_number in range(1, rounds + 1):
        for label, spec in specs.items():
            runs[label].append(measure(spec))
        print(f"round {round_number}/{rounds} done", file=sys.stderr, flush=True)
    return {
        label: {
            "img_s": statistics.median(r["img_s"] for r in results),
            "img_s_range": (min(r["img_s"] for r in results), max(r["img_s"] for r in results)),
            "peak_rss_mib": statistics.median(r["peak_rss_mib"] for r in results),
        }
        for label, results in runs.items()
    }


def print_table(heading: str, results: dict[str, dict], rounds: int, memory=False) -> None:
    """The machine, then a Markdown table of each row's median img/s and range (and its
    peak RSS when memory)."""
    print(f"{heading}, torch {torch.__version__}, {os.cpu_count()} CPUs, median of {rounds} rounds")
    extra = (" peak RSS (MiB) |", "---|") if memory else ("", "")
    print(f"| configuration | img/s | lowest-highest |{extra[0]}\n|---|---|---|{extra[1]}")
    for label, r in results.items():
        low, high = r["img_s_range"]
        rss = f" {r['peak_rss_mib']:.0f} |" if memory else ""
        print(f"| {label} | {r['img_s']:.1f} | {low:.1f}-{high:.1f} |{rss}")


def main(argv=None) -> None:
    """Measure every configuration of one model and print the table and the ratios."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=sorted(MODELS), default="resnet20")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--size", type=int, help="image size (default: the model's)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3, help="measure every row this often")
    parser.add_argument(
        "--recipes",
        action="store_true",
        help="only ResNet-18 on JPEGs: default flags against -recipe torchvision",
    )
    parser.add_argument(
        "--data",
        action="store_true",
        help="only the data pipeline (1 and 2 workers): folders, shards (local, fetched), parquet",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(json.loads(args.one))))
    elif args.recipes:
        compare_recipes(args)
    elif args.data:
        compare_data(args)
    else:
        compare_defaults(args)


def default_rows(default_label: str, layout: str) -> dict[str, dict]:
    """The rows of the default comparison: bare loops, the trainer, pipelines, references."""
    bare = {"kind": "bare", "layout": "channels_last", "precision": "fp32"}
    return {
        "bare fp32 contiguous": {**bare, "layout": "contiguous"},
        "bare fp32 channels_last": bare,
        "bare fp32 channels_last -hostAllocator system": {**bare, "allocator": "system"},
        "bare bf16 channels_last": {**bare, "precision": "bf16"},
        default_label: {"kind": "trainer", "layout": layout, "precision": "fp32"},
        "trainer -precision bf16": {**bare, "kind": "trainer", "precision": "bf16"},
        "bare fp32 channels_last -optnet": {**bare, "optnet": True},
        "pipeline (1 thread)": {"kind": "pipeline"},
        "JPEG decode alone (1 thread)": {"kind": "jpeg_decode"},
        "JPEG ImageNet train pipeline (1 thread)": {"kind": "jpeg_pipeline"},
        "baseline (pytorch/examples style)": {"kind": "baseline"},
        "reference: every FLOP at fp32 conv peak": {"kind": "reference"},
    }


def compare_defaults(args) -> None:
    """The default flags against bare loops and the other rows, with the ratios."""
    base = {"model": args.model, "batch": args.batch, "warmup": args.warmup,
            "steps": args.steps, "size": args.size, "allocator": "cache"}  # fmt: skip
    machine = devices.Machine.here()
    model, size = build(args.model, args.size)  # what the CLI's default picks: it times both
    timed = layouts.time_layouts(model, (min(args.batch, 32), 3, size, size), (torch.float32, None))
    layout = max(layouts.LAYOUTS, key=timed.get)
    default_label = f"trainer default (fp32, -memoryFormat auto: {layout})"
    print(f"CPU capability {machine.cpu_capability}, native bf16: {machine.cpu_bf16}")
    rows = default_rows(default_label, layout)
    results = measure_rounds({label: {**base, **spec} for label, spec in rows.items()}, args.rounds)
    print_table(f"{args.model}, batch {args.batch}", results, args.rounds, memory=True)
    print_ratios(results, default_label, layout)


def print_ratios(results: dict[str, dict], default_label: str, layout: str) -> None:
    """The ratios the benchmark promises, each from the rows it measured, with its target."""
    img_s = {label: r["img_s"] for label, r in results.items()}
    default, bf16 = img_s[default_label], img_s["trainer -precision bf16"]
    baseline = img_s["baseline (pytorch/examples style)"]
    faster_bare = max(img_s["bare fp32 channels_last"], img_s["bare fp32 contiguous"])
    rss = {label: r["peak_rss_mib"] for label, r in results.items()}
    optnet, default_rss = rss["bare fp32 channels_last -optnet"], rss["bare fp32 channels_last"]
    speed = img_s["bare fp32 channels_last -optnet"] / img_s["bare fp32 channels_last"]
    print(
        f"-optnet peak RSS: {optnet:.0f} / {default_rss:.0f} MiB, a {1 - optnet / default_rss:.0%}"
        f" cut (target >= 30% for ResNeXt-50 at 224), at {speed:.2f}x the speed"
    )
    for label, ratio, target in [
        ("trainer / bare, same flags", default / img_s[f"bare fp32 {layout}"], "0.95"),
        ("default flags / the faster bare fp32 layout", default / faster_bare, "0.95"),
        ("default flags / bare fp32 NCHW", default / img_s["bare fp32 contiguous"], "1.3"),
        ("default flags / baseline", default / baseline, "1.3"),
        ("-precision bf16 / baseline", bf16 / baseline, "2"),
    ]:
        print(f"{label}: {ratio:.2f}x (target >= {target})")
    reference = img_s["reference: every FLOP at fp32 conv peak"]
    print(
        f"default flags / fp32 conv-peak reference: {default / reference:.2f}x;"
        f" reference / baseline: {reference / baseline:.2f}x"
    )
    system = img_s["bare fp32 channels_last -hostAllocator system"]
    print(f"-hostAllocator cache / system: {img_s['bare fp32 channels_last'] / system:.2f}x")
    jpeg = img_s["JPEG ImageNet train pipeline (1 thread)"] / img_s["JPEG decode alone (1 thread)"]
    print(f"JPEG pipeline / decode alone: {jpeg:.2f}x (target >= 0.6)")
    pipeline = img_s["pipeline (1 thread)"]
    print(f"augmentation pipeline: {pipeline:.0f} img/s on one thread (target >= 20,000 at 32x32)")


def compare_data(args) -> None:
    """The ImageNet train pipeline's img/s with 1 and 2 workers, from class folders, tar
    shards and parquet files of the same JPEGs (target: shards and parquet >= 0.9x the
    folders)."""
    base = {"batch": 32, "warmup": 2, "steps": args.steps, "allocator": "cache"}
    sources = {"class folders": "folder", "tar shards": "shards",
               "fetched shards (pipe:cat)": "fetched", "parquet": "parquet"}  # fmt: skip
    rows = {f"{label}, -nThreads {workers}": {"kind": f"data_{source}", "workers": workers}
            for workers in (2, 1) for label, source in sources.items()}  # fmt: skip
    results = measure_rounds({label: {**base, **spec} for label, spec in rows.items()}, args.rounds)
    print_table("ImageNet train pipeline, batch 32", results, args.rounds)
    img_s = {label: r["img_s"] for label, r in results.items()}
    for workers in (2, 1):
        folder = img_s[f"class folders, -nThreads {workers}"]
        ratios = ", ".join(f"{s} {img_s[f'{s}, -nThreads {workers}'] / folder:.2f}x"
                           for s in list(sources)[1:])  # fmt: skip
        print(f"-nThreads {workers}, / class folders: {ratios} (target >= 0.9)")
    scaling = {s: img_s[f"{s}, -nThreads 2"] / img_s[f"{s}, -nThreads 1"] for s in sources}
    print("-nThreads 2 / 1: " + ", ".join(f"{s} {r:.2f}x" for s, r in scaling.items()))


def compare_recipes(args) -> None:
    """ResNet-18 training img/s on JPEGs, pipeline included: default flags against -recipe
    torchvision (target: within 15%)."""
    base = {"batch": args.batch, "warmup": args.warmup, "steps": args.steps, "allocator": "cache"}
    rows = {
        "ResNet-18 on JPEGs, default flags (224 crops)": {"kind": "jpeg_train"},
        "ResNet-18 on JPEGs, -recipe torchvision (176 crops)": {"kind": "jpeg_train_recipe"},
        "the same at 224 crops (-trainCrop 224)": {"kind": "jpeg_train_recipe", "crop": 224},
        "in-memory 32x32 augmentation (1 thread)": {"kind": "pipeline", "model": "resnet20"},
        "the same, -autoAugment ta_wide -randomErasing 0.1": {
            "kind": "pipeline_policy",
            "model": "resnet20",
        },
    }
    results = measure_rounds({label: {**base, **spec} for label, spec in rows.items()}, args.rounds)
    print_table(f"batch {args.batch}", results, args.rounds)
    default, recipe, same_crop, plain, policy = (r["img_s"] for r in results.values())
    print(
        f"-recipe torchvision / default flags: {recipe / default:.2f}x (target >= 0.85);"
        f" at the default's 224 crops: {same_crop / default:.2f}x"
    )
    print(
        f"in-memory augmentation with a policy: {policy:.0f} img/s on one thread,"
        f" {plain / policy:.0f}x the time of the default's {plain:.0f} img/s"
    )


if __name__ == "__main__":
    main()
