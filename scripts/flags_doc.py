"""Write docs/flags.md from the option parser: each flag's name and default come from
opts.FLAGS, what it does from WHAT_IT_DOES below, so the page cannot fall behind the flags
(tests/test_docs.py fails when the file differs from what this writes).

    python scripts/flags_doc.py           # rewrite docs/flags.md
    python scripts/flags_doc.py --check   # exit 1 when docs/flags.md is stale
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import opts  # noqa: E402 - after the repository root is on the path

PAGE = os.path.join(ROOT, "docs", "flags.md")
INTRO = """# Flags

Every flag of both Lua repositories, with the same name, type and default (the ResNeXt fork's
defaults where they differ). `-name value` and `--name value` both work; booleans take
`true`/`false` (also `1`/`0`) or stand alone (`-testOnly`). `python main.py -h` lists them.
"""
RECIPE_TITLE = (
    "## Recipe flags (new; off by default, so every command above trains exactly as before)"
)
OUTRO = """Flags are spelled out in full (`-sav` is an unknown flag, not `-save`) and given once; a
flag given twice is an error rather than the last one silently winning. Every bad input
(unknown flag or value, missing folder, a checkpoint of another network, a broken data or
checkpoint file, a `-save` that cannot be written) ends with one line `error: ...` saying
what to do, exit status 2, and nothing written under `-save`.

## Flags from a file: `-config FILE`

A JSON object or a YAML mapping (`.yaml` / `.yml`, with PyYAML) of flag names and values
(`LR: 0.05`, lists as lists: `lrSteps: [30, 60]`); flags given on the command line win, a
recipe's values yield to the file's. A run's own `opts.json` is such a file, so replaying a
run is `python main.py -config runs/x/opts.json -data DATA -save runs/y` (same flags, same
seed: the same weights; `tests/test_config.py` checks it bitwise). The flags that say where
a run reads and writes, or run a command (`-data`, `-gen`, `-save`, `-resume`, `-overwrite`,
`-retrain`, `-optimState`, `-shardSource`), are taken from the command line only: a file from
someone else cannot choose a folder to overwrite or a shell command; the start line names
those of the file left aside. An unknown key, a bad value or an unreadable file is one
`error:` line. The new run's `opts.json` records the file's path (`config`) and its whole
content (`configFile`). Examples, one per recipe: [docs/configs/](configs/).
"""
# The flags of the second table: the training recipes' options beyond the Lua's.
RECIPE_FLAGS = (
    "recipe",
    "lrSchedule",
    "lrSteps",
    "lrGamma",
    "lrMin",
    "warmupEpochs",
    "warmupStart",
    "labelSmoothing",
    "dropPath",
    "headDropout",
    "loss",
    "bceTargetThreshold",
    "mixup",
    "cutmix",
    "autoAugment",
    "randomErasing",
    "erasingStyle",
    "erasingArea",
    "erasingAspect",
    "optimizer",
    "nesterov",
    "trainCrop",
    "valResize",
    "valCrop",
    "valInterpolation",
    "repeatedAug",
    "ema",
    "emaEvery",
    "normWeightDecay",
    "biasWeightDecay",
    "clipGradNorm",
    "accumSteps",
)
WHAT_IT_DOES = {
    "data": (
        "dataset root: `train/` and `val/` class folders, the tar shards of "
        "`scripts/make_shards.py`, or Hugging Face parquet / `save_to_disk` files (imagenet; "
        "[data.md](data.md)); the CIFAR / Fashion-MNIST files (optional)"
    ),
    "dataset": (
        "`imagenet` (any class-per-folder tree), `cifar10`, `cifar100`, `fashionmnist` (new)"
    ),
    "config": (
        "new: a JSON or YAML file of flags, the command line winning (a run's `opts.json`"
        " replays it; see below)"
    ),
    "recipe": (
        "set the flags of a published recipe, `fb`, `resnext`, `torchvision`, `resnest`, "
        "`random-erasing` or `fast-small` ([recipes.md](recipes.md)); flags given on the command "
        "line win; the values set are printed at start and saved in `opts.json`"
    ),
    "manualSeed": "seeds torch and the data loaders; 0 is a seed too, as in the Lua",
    "nGPU": "GPUs; >1 wraps the model in DataParallel; without CUDA the CPU is used (said once)",
    "device": (
        "new: `auto` takes CUDA if present, then MPS (Apple silicon), then the CPU; `cuda`, "
        "`mps` or `cpu` ask for one (absent: one line, exit 2); recorded resolved in `opts.json`"
    ),
    "backend": "accepted and unused, as in the Lua",
    "cudnn": (
        "`fastest`: cudnn.benchmark; `deterministic`: deterministic algorithms, cuDNN's and "
        "cuBLAS's (it sets `CUBLAS_WORKSPACE_CONFIG=:4096:8` before CUDA starts, unless you set "
        "it); `default`"
    ),
    "gen": "folder for the image index cache and downloads",
    "precision": (
        "`single`, `double`, `bf16` (autocast), `half` (fp16 autocast with a GradScaler, CUDA "
        "and MPS), `auto` (new: bf16 where the device computes it natively, a CUDA GPU of Ampere "
        "or later or a CPU with AMX / AVX512-BF16, else single; said at start, recorded in "
        "`opts.json`)"
    ),
    "memoryFormat": (
        "new: `channels_last` or `contiguous` (same numbers, different speed); `auto`: "
        "channels_last on GPUs and AVX-512 CPUs, contiguous on others (said at start)"
    ),
    "hostAllocator": (
        "new: `cache` keeps freed host memory for reuse (glibc; each step's activations are not "
        "unmapped and faulted back in), `system` leaves the C library's default"
    ),
    "compile": (
        "new: `torch.compile` the model (on the CPU it needs a C++ compiler; the first iterations"
        " compile)"
    ),
    "nThreads": (
        "DataLoader workers for folder datasets (0: load in the main process; at most 8 per "
        "core); CIFAR and Fashion-MNIST are augmented as whole batches in memory and do not use "
        "them"
    ),
    "nEpochs": "0: ImageNet 100, CIFAR and Fashion-MNIST 300",
    "epochNumber": "first epoch when not resuming (at most `-nEpochs`)",
    "batchSize": (
        "total mini-batch size (under torchrun: the global batch, split among the processes)"
    ),
    "testOnly": (
        "evaluate once (model from -resume, -retrain, or fresh) and print ` * Results` (alone: no"
        " ` * Finished epoch # 0`); training-only options given with it (`-mixup`, "
        "`-autoAugment`, a recipe's, `-ema` on a model without an average, ...) are named in one "
        "warning line"
    ),
    "tenCrop": "ten-crop testing (folder datasets); val batches of floor(batchSize/10) images",
    "save": "where checkpoints and `opts.json` go",
    "resume": "folder to resume from (its `latest.pth`); a folder without one starts from scratch",
    "LR": "base learning rate of the step schedule",
    "momentum": "Nesterov momentum, in [0, 1) (0: plain SGD)",
    "weightDecay": "L2 on every parameter (BN and biases included, as the Lua)",
    "normWeightDecay": (
        "weight decay of normalisation layers' weights and biases (unset: `-weightDecay`)"
    ),
    "biasWeightDecay": "weight decay of every bias (unset: as the other weights of its layer)",
    "lrSchedule": (
        "`lua`: the Lua's per-dataset steps; `step`: x`-lrGamma` from each epoch of `-lrSteps` "
        "on; `cosine`: half a cosine from `-LR` to `-lrMin` over the epochs after the warm-up, "
        "set at every iteration"
    ),
    "lrSteps": (
        "`-lrSchedule step`: epochs from which the LR is multiplied by `-lrGamma`, e.g. `30,60,90`"
    ),
    "lrGamma": "`-lrSchedule step`: the factor at each step",
    "lrMin": "`-lrSchedule cosine`: the last LR",
    "warmupEpochs": (
        "linear warm-up over the first N epochs (fractions allowed), per iteration: the "
        "schedule's LR times a factor rising from `-warmupStart` to 1"
    ),
    "warmupStart": "the warm-up's first factor",
    "labelSmoothing": "label smoothing of the loss's targets (cross-entropy or BCE), in [0, 1)",
    "dropPath": (
        "stochastic depth: each residual block's branch is dropped for whole samples"
        " (torchvision's `StochasticDepth`), at a rate rising linearly from 0 at the first"
        " block to N at the last, as timm's `--drop-path` (every network family; no weights"
        " added, so model files and `-weights` are unchanged)"
    ),
    "headDropout": (
        "dropout of the pooled features before the classifier, as timm's `--drop` (0: the"
        " network's own: none, or SENet's 0.2); not `-dropout`, the Wide ResNets' inside a block"
    ),
    "loss": (
        "`ce`: the Lua's cross-entropy; `bce`: binary cross-entropy of each class's logit, as"
        " ResNet strikes back and timm's `--bce-loss` (labels one-hot, -mixup / -cutmix rows as"
        " mixed, both smoothed by -labelSmoothing); the printed Err is the loss used"
    ),
    "bceTargetThreshold": (
        "`-loss bce`: targets above it become 1, the others 0 (timm's `--bce-target-thresh`;"
        " 0: the targets as they are); refused with `-loss ce`"
    ),
    "clipGradNorm": "clip the gradients' global L2 norm to N (0: off)",
    "accumSteps": (
        "gradient accumulation: each step's batch (`-batchSize`, the global batch the LR and"
        " the schedule count) is computed in N micro-batches whose gradients are summed before"
        " the one optimizer step, so memory holds one micro-batch's activations; equal to the"
        " whole batch where no BatchNorm statistics are in play (BatchNorm sees the"
        " micro-batch); under DDP only the last micro-batch all-reduces (`no_sync`). A step is"
        " never cut: checkpoints fall between steps, as without it"
    ),
    "mixup": "MixUp with lambda ~ Beta(a, a) on whole batches (torchvision's `v2.MixUp`)",
    "cutmix": (
        "CutMix with lambda ~ Beta(a, a) (`v2.CutMix`); with `-mixup` too, one of the two per "
        "batch; the training top-1 / top-5 are then errors against each mixed image's dominant "
        "class"
    ),
    "ema": (
        "keep an exponential moving average of the weights (and BatchNorm statistics), decay per "
        "step; it is what validation, `model_best.pth`, `-testOnly` and the scripts use; saved in"
        " the model files as `ema` (with its decay and `-emaEvery`); `-resume` of a run that kept"
        " one needs `-ema` again (refused otherwise, naming the values)"
    ),
    "emaEvery": (
        "update the average every N steps, with decay^N; more than the steps of an epoch is "
        "refused at start"
    ),
    "netType": (
        "`resnet`, `preresnet`, `resnext`; new: `resnest` (ResNeSt), `senet` (SENet-154), `wrn`"
        " (Wide ResNet, small images)"
    ),
    "bottleneckType": "`resnet`, `resnext_B`, `resnext_C`",
    "depth": "unset: resnext 50 (ImageNet) / 29 (CIFAR); resnet and preresnet 34 / 20; wrn 28",
    "baseWidth": "ResNeXt base width",
    "cardinality": "ResNeXt groups",
    "radix": (
        "new, `-netType resnest`: splits of each split-attention convolution (1: a sigmoid gate "
        "instead of the softmax)"
    ),
    "se": (
        "new: squeeze-and-excitation ratio in every block of `resnet` / `resnext` (0: none; "
        "SENet's is 16): SE-ResNet, SE-ResNeXt as timm builds them"
    ),
    "shortcutType": "`A`, `B`, `C`; unset: B, or A for CIFAR resnet/preresnet",
    "retrain": "start from a model file: ours, or a torchvision state_dict",
    "weights": (
        "new: start from published weights by name, torchvision's "
        "(`ResNet50_Weights.IMAGENET1K_V2`, `...DEFAULT`) or timm's (`timm/resnest50d.in1k`), "
        "through torch.hub's and the Hugging Face cache; or from a file that says what network "
        "it is (a model file, an export of `scripts/export.py`: safetensors or a Hub folder, "
        "[export.md](export.md)); the network, and the val sizes unless given, come from them"
    ),
    "optimState": "load an optimizer state (dead in the Lua; works here)",
    "shareGradInput": (
        "the Lua's memory saver, here activation checkpointing: each residual block is recomputed"
        " in the backward pass (same results)"
    ),
    "optnet": "the same; still exclusive with -shareGradInput, as in the Lua",
    "resetClassifier": "replace the last Linear with an `-nClasses`-way one (fine-tuning)",
    "frozenStages": (
        "new, fine-tuning: freeze the stem (0) and stages 1..K (no gradient, BN in eval mode, not"
        " in the optimizer); -1: none"
    ),
    "normEval": (
        "new, fine-tuning: every BatchNorm stays in eval mode (running statistics kept); refused "
        "without `-retrain` / `-weights` / `-resume` (the statistics would stay at mean 0, "
        "variance 1)"
    ),
    "zeroInitResidual": "new: each residual branch's last BN gamma starts at 0 (a fresh network)",
    "nClasses": (
        "classes of the network (and of `-resetClassifier`'s new classifier); 0: the dataset's own"
    ),
    "checkpointEvery": "new: also checkpoint every N iterations (mid-epoch, resumable)",
    "keepCheckpoints": "new: keep the per-epoch files of the last K epochs (0: all, as the Lua)",
    "cropSize": (
        "new, folder datasets: the side of the train crops and of the val centre crop (val images"
        " resized to it / 0.875 first: 256 for 224, as the Lua); ResNeSt's papers use 256 / 320 /"
        " 416 for depths 101 / 200 / 269"
    ),
    "trainCrop": "folder datasets: training crop side (0: `-cropSize`)",
    "valResize": (
        "folder datasets: short side of val images before the centre crop (0: the val crop / 0.875)"
    ),
    "valCrop": (
        "folder datasets: val centre crop side (0: `-cropSize`). A crop or resize whose batch "
        "cannot fit in the device's memory is refused at start, and one forward pass at the val "
        "batch's size runs before the first epoch"
    ),
    "valInterpolation": (
        "new, folder datasets: `bicubic` or `bilinear`, the val images' resize (antialiased); "
        "with `-weights`, the weights' own"
    ),
    "autoAugment": (
        "`ta_wide` (TrivialAugmentWide), `ra` (RandAugment, magnitude 9), `imagenet` "
        "(AutoAugment's ImageNet policy), `augmix` (severity 3): torchvision's, per image; "
        "`rand-m7-mstd0.5-inc1`, `rand-m6-mstd0.5-inc1`: timm's RandAugment as ResNet strikes "
        "back uses it (an optional package), each image drawing from its own seed; on "
        "folder datasets it replaces the Lua's colour jitter and lighting"
    ),
    "randomErasing": (
        "probability of erasing a random box of each training image: by default to the mean "
        "colour (`v2.RandomErasing`); `-erasingStyle` picks the Random Erasing paper's box and fill"
    ),
    "erasingStyle": (
        "`torchvision` (`v2.RandomErasing`: area 2-33%, log-uniform aspect 0.3-3.3, mean colour),"
        " `paper` (the Random Erasing paper: area 2-40%, uniform aspect 0.3-1/0.3, random values),"
        " `authors` (the paper's box filled with its code's constant) ([recipes.md](recipes.md))"
    ),
    "erasingArea": "`min,max` of the erased box's share of the image's area (unset: the style's)",
    "erasingAspect": "`min,max` of the erased box's height / width (unset: the style's)",
    "nesterov": (
        "Nesterov momentum, as the Lua's SGD (and LARS); `false` gives plain momentum SGD (the"
        " Random Erasing paper's and torchvision's); a resume keeps the checkpoint's or is"
        " refused"
    ),
    "optimizer": (
        "`sgd` (the Lua's), `adamw` and `rmsprop` (torch's; RMSprop with torchvision's alpha"
        " 0.9, eps 0.0316), `lamb` and `lars` (timm's `timm.optim`, an optional package: a"
        " missing one is one line). `-weightDecay` is each one's weight decay (AdamW's and"
        " LAMB's decoupled), `-momentum` is for sgd, rmsprop and lars, `-nesterov` for sgd and"
        " lars (given elsewhere: refused); `-LR` keeps the Lua's 0.1 unless given (AdamW and"
        " LAMB take about 1e-3). The checkpoint records it: a resume with another is refused"
    ),
    "widenFactor": "new, `-netType wrn`: the Wide ResNet's widths 16k, 32k, 64k (WRN-depth-k)",
    "dropout": (
        "new, `-netType wrn`: dropout between the two convolutions of every block, as the WRN "
        "paper's code"
    ),
    "repeatedAug": (
        "repeated augmentation: each image N times in a row in an epoch, each copy augmented with"
        " its own draws, the epoch's length kept; under torchrun the copies go to different "
        "processes"
    ),
    "decodeOnDevice": (
        "new, folder datasets: baseline colour and grey JPEGs are decoded on the training device "
        "(TorchCodec, nvJPEG on CUDA) instead of in the loader workers; CMYK, progressive and "
        "12-bit JPEGs and other formats, which nvJPEG does not decode right, still are"
    ),
    "overwrite": (
        "new: start afresh in a `-save` folder that holds another run, deleting that run's files "
        "(checkpoints, `opts.json`, `metrics.jsonl`, `tb/`) at the first write"
    ),
    "tensorboard": "new: also write TensorBoard scalars under `<save>/tb`",
    "logger": (
        "new: also log to `wandb`, `mlflow` or both (`wandb,mlflow`; optional packages): the "
        "options, the training lines, each epoch's errors and the final scores; rank 0 only; a "
        "resumed run continues the same tracker runs (`<save>/trackers.json`); docs/output.md"
    ),
    "syncBN": (
        "new, under torchrun: batch normalisation statistics over the global batch (any device, "
        "gloo or nccl)"
    ),
    "rendezvousTimeout": (
        "new, several processes (srun, or `WORLD_SIZE` / `MASTER_ADDR` / `MASTER_PORT` set by "
        "hand): seconds each process waits at start for all the others; then one `error:` line "
        "naming the ranks missing (rank 0) or the address that never answered (the others). "
        "SIGTERM / Ctrl-C while waiting stops at once. torchrun has its own (`--rdzv-timeout`)"
    ),
    "requeueSignal": (
        "new: comma list of signals (`USR1,USR2`; the `SIG` prefix optional; `none`: off) that "
        "save a mid-epoch checkpoint and, inside a SLURM job, requeue it with `scontrol requeue` "
        "(an array task alone), as `sbatch --requeue --signal=USR1@120` asks before a time limit; "
        "outside SLURM they save and stop. SIGTERM (`scancel`) and Ctrl-C save and stop without "
        "requeueing"
    ),
    "maxRequeues": (
        "new, SLURM: once the job has restarted this many times (`SLURM_RESTART_COUNT`), a "
        "requeue signal saves and stops without requeueing"
    ),
    "printFreq": (
        "new: print a training / test line every N iterations (the Lua printed every one); "
        "`auto`: a progress bar on a terminal, else about 20 of the lines a pass, each with the "
        "time elapsed and left, and every iteration in metrics.jsonl (docs/output.md); with N, "
        "the device is only waited for when a line is printed"
    ),
    "skipCorrupt": "new: skip unreadable images (counted per epoch) instead of stopping",
    "imageColumn": "new: Hugging Face parquet / Arrow data: the column holding the images' bytes",
    "labelColumn": "new: Hugging Face parquet / Arrow data: the column holding the class indices",
    "shuffleBuffer": (
        "new: parquet data is read a row group at a time and fetched shards a shard at a time, "
        "so an epoch's order shuffles the row groups (shards), then the images within each run "
        "of them holding this many; each loader worker keeps up to twice that in memory "
        "([data.md](data.md))"
    ),
    "shardSource": (
        "new: tar shards kept elsewhere: each is fetched from this path, or the output of this "
        "`pipe:` shell command, with `{shard}` replaced by its name, into `<gen>/spool-*` as the "
        "epoch reaches it, and checked against `shards.json` (which `-data` holds); '': the "
        "shards lie in `-data` ([data.md](data.md))"
    ),
    "fetchTimeout": (
        "new: the seconds a shard's fetch (`-shardSource`) may take: a fetch that takes longer "
        "is ended (its whole process group) and the run stops with one line naming the shard "
        "([data.md](data.md))"
    ),
    "preciseBN": (
        "new: before each test pass (and with `-testOnly`), set every BatchNorm's running "
        "statistics to their average over N training images, in the epoch's order, averaged over "
        "processes (0: off, the Lua's moving averages)"
    ),
}


def default_text(value) -> str:
    """A default as the table shows it: as typed on the command line, '' for an empty
    string, unset for none."""
    if value is None:
        return "unset"
    if value in ("", ()):
        return "`''`"
    return f"`{opts.flag_text(value)}`"


def table(names: list[str], heading: str) -> str:
    """A markdown table of the flags named, in the parser's order."""
    rows = [f"| flag | default | {heading} |", "|---|---|---|"]
    defaults = {name: default for name, _, default, _ in opts.FLAGS}
    rows += [f"| `-{n}` | {default_text(defaults[n])} | {WHAT_IT_DOES[n]} |" for n in names]
    return "\n".join(rows) + "\n"


def page() -> str:
    """docs/flags.md as the parser's flags make it."""
    names = [name for name, *_ in opts.FLAGS]
    missing = [name for name in names if name not in WHAT_IT_DOES]
    if missing:
        raise SystemExit(f"error: say what {', '.join(missing)} do(es) in WHAT_IT_DOES")
    lua = [name for name in names if name not in RECIPE_FLAGS]
    recipe = [name for name in names if name in RECIPE_FLAGS]
    return "\n".join(
        [
            INTRO,
            table(lua, "what it does here"),
            RECIPE_TITLE + "\n",
            table(recipe, "what it does"),
            OUTRO,
        ]
    )


def main(argv: list[str]) -> int:
    """Rewrite the page, or with --check say whether it is current."""
    text = page()
    if "--check" in argv:
        with open(PAGE, encoding="utf-8") as handle:
            current = handle.read() == text
        if not current:
            print("error: docs/flags.md is stale: run python scripts/flags_doc.py", file=sys.stderr)
        return 0 if current else 1
    with open(PAGE, "w", encoding="utf-8") as handle:
        handle.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
