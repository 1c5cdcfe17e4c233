"""Export a trained model to share or deploy it (docs/export.md):

    python scripts/export.py CHECKPOINT OUT.onnx --format onnx --images DIR [--fp16] [--opset 18]
    python scripts/export.py CHECKPOINT OUT.safetensors --format safetensors
    python scripts/export.py CHECKPOINT OUT_FOLDER --format hub

CHECKPOINT: a model file of this tool (model_best.pth, model_<epoch>.pth, one converted from
.t7), a torchvision or timm ResNet state_dict, published weights by name, or a file exported
here. The network leaves in eval mode with the weights it is evaluated with (-ema's when it has
them). onnx: a dynamic batch dimension, through torch's dynamo exporter (the TorchScript one
where that fails, said so), then checked with onnxruntime on the real images given: the
largest logit difference to PyTorch within 1e-4 (fp32) and the same top-1 on every image, else
exit 1. safetensors: the weights, with the network, class names and preprocessing in its
metadata. hub: a folder for the Hugging Face Hub (model.safetensors, config.json, a README
model card from the run's records). OUT must not exist; nothing is left there unless the
export is complete (and, for ONNX, valid).
"""

import argparse
import contextlib
import copy
import json
import os
import re
import shutil
import sys
import warnings

import inference
import torch

import checkpoints  # noqa: E402 - inference puts the repository root on the path
import models  # noqa: E402
import opts as options  # noqa: E402
from errors import Stopped, UsageError, first_line, stopped_status, stops_raise  # noqa: E402

FP32_BOUND = 1e-4  # the largest logit difference an fp32 ONNX model may have
FP16_BOUND = 1e-2  # fp16: relative to the largest logit
DEFAULT_OPSET = 18
DYNAMO_LOWEST_OPSET = 18  # torch's dynamo exporter writes 18 when asked for less
LOWEST_OPSET = 7  # the TorchScript exporter's lowest


class ValidationFailed(Exception):
    """The exported ONNX model computes other logits than PyTorch."""


def check_target(out: str) -> None:
    """OUT must be new: an export never writes over a file or folder."""
    if os.path.lexists(out):
        raise UsageError(f"{out} exists: give a new name (an export never writes over anything)")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise UsageError(f"no folder {parent} to write {os.path.basename(out)} in")


def onnx_modules():
    """(onnx, onnxruntime), or a UsageError saying what to install."""
    try:
        import onnx
        import onnxruntime
    except ImportError:
        raise UsageError(
            "--format onnx needs onnx and onnxruntime: pip install onnx onnxruntime"
        ) from None
    return onnx, onnxruntime


def export_onnx(model: torch.nn.Module, side: int, path: str, opset: int, fp16: bool) -> str:
    """The network written to path as ONNX with a dynamic batch; which exporter wrote it.
    The dynamo exporter first; the TorchScript one where it fails, or for an opset below
    DYNAMO_LOWEST_OPSET, which dynamo does not write (it raises the opset instead)."""
    example = torch.randn(2, 3, side, side, dtype=torch.float16 if fp16 else torch.float32)
    names = {"input_names": ["images"], "output_names": ["logits"], "opset_version": opset}
    dynamo_failure = None
    if opset >= DYNAMO_LOWEST_OPSET:
        try:
            with quiet():
                batch = torch.export.Dim("batch", min=1, max=4096)
                program = torch.onnx.export(model, (example,), dynamo=True, verbose=False,
                                            dynamic_shapes=({0: batch},), **names)  # fmt: skip
                program.save(path)
            return "dynamo"
        except Exception as failure:  # noqa: BLE001 - any failure: try the other exporter
            dynamo_failure = failure
    try:
        axes = {"images": {0: "batch"}, "logits": {0: "batch"}}
        with quiet():
            torch.onnx.export(model, (example,), path, dynamo=False, dynamic_axes=axes, **names)
    except Exception as failure:  # noqa: BLE001 - said in one line
        dynamo = f"{root_cause(dynamo_failure)} (dynamo exporter); " if dynamo_failure else ""
        raise UsageError(
            f"cannot export this network to ONNX: {dynamo}{root_cause(failure)} (TorchScript"
            " exporter)"
        ) from None
    if dynamo_failure is not None:
        print(f"=> the dynamo exporter failed ({root_cause(dynamo_failure)}): used the"
              " TorchScript exporter")  # fmt: skip
    return "torchscript"


def check_opset(opset: int) -> None:
    """--opset within what the installed onnx package defines (checked before any work)."""
    onnx, _ = onnx_modules()
    newest = onnx.defs.onnx_opset_version()
    if not LOWEST_OPSET <= opset <= newest:
        raise UsageError(
            f"--opset {opset}: the installed onnx {onnx.__version__} writes opsets"
            f" {LOWEST_OPSET} to {newest}; give one of those (default {DEFAULT_OPSET})"
        )


def written_opset(path: str, asked: int) -> int:
    """The ONNX file's own opset (its default domain's), which must be the one asked for:
    an exporter may give another without a word."""
    onnx, _ = onnx_modules()
    model = onnx.load(path, load_external_data=False)
    found = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    if found != [asked]:
        raise UsageError(
            f"--opset {asked}: the exporter wrote opset {found[0] if found else 'none'}"
            f" instead; give --opset {found[0] if found else DEFAULT_OPSET}, nothing was written"
        )
    return asked


def root_cause(exc: BaseException, limit: int = 240) -> str:
    """The first line of the innermost cause of exc (where an exporter names the operator
    it has no translation for), without terminal colours, at most limit characters."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return re.sub(r"\x1b\[[0-9;]*m", "", first_line(exc))[:limit]


@contextlib.contextmanager
def quiet():
    """The exporters' own printing (progress, graphs dumped on failure, deprecation
    warnings), from Python or C++, kept off the terminal: what matters is said in one line."""
    sys.stdout.flush(), sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as sink, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            os.dup2(sink.fileno(), 1), os.dup2(sink.fileno(), 2)
            with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
                yield
    finally:
        os.dup2(saved[0], 1), os.dup2(saved[1], 2)
        os.close(saved[0]), os.close(saved[1])


def add_metadata(path: str, described: dict) -> None:
    """Put the network, classes and preprocessing in the ONNX file's metadata_props."""
    onnx, _ = onnx_modules()
    model = onnx.load(path)
    for key, value in described.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    onnx.save(model, path)


@torch.no_grad()
def validate(model: torch.nn.Module, path: str, inputs: torch.Tensor, fp16: bool) -> str:
    """Check the ONNX model against the fp32 PyTorch model on inputs (all at once, and the
    first alone): the figures in a line, or ValidationFailed."""
    _, onnxruntime = onnx_modules()
    try:
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime's own error types, said in one line
        raise UsageError(
            f"onnxruntime {onnxruntime.__version__} cannot run the exported model"
            f" ({root_cause(exc)}); give another --opset, nothing was written"
        ) from None
    dtype = torch.float16 if fp16 else torch.float32
    expected = model(inputs).double()
    runs = [
        session.run(None, {"images": batch.to(dtype).numpy()})[0] for batch in (inputs, inputs[:1])
    ]
    got = torch.from_numpy(runs[0]).double()
    single = torch.from_numpy(runs[1]).double()
    difference = max(
        float((got - expected).abs().max()), float((single - expected[:1]).abs().max())
    )
    bound = FP16_BOUND * float(expected.abs().max()) if fp16 else FP32_BOUND
    same = int((got.argmax(1) == expected.argmax(1)).sum())
    figures = (f"{len(inputs)} images: largest logit difference {difference:.2e} (bound"
               f" {bound:.0e}), the same top-1 on {same}/{len(inputs)}")  # fmt: skip
    if difference > bound or (same < len(inputs) and not fp16):
        raise ValidationFailed(f"the ONNX model differs from PyTorch: {figures}")
    return figures


def write_onnx(loaded, out: str, args) -> None:
    """ONNX at out, validated on args.images first (written to a temporary name)."""
    onnx_modules()
    files = inference.image_files(args.images)
    inputs = torch.stack([inference.preprocess(f, loaded.view) for f in files])
    partial = f"{out}.{os.getpid()}.partial"
    try:
        model = copy.deepcopy(loaded.model).half() if args.fp16 else loaded.model
        exporter = export_onnx(model, inputs.shape[-1], partial, args.opset, args.fp16)
        opset = written_opset(partial, args.opset)
        add_metadata(partial, described(loaded) | {"opset": opset, "exporter": exporter})
        figures = validate(loaded.model, partial, inputs, args.fp16)
        os.replace(partial, out)
    finally:
        for leftover in (partial, partial + ".data"):
            if os.path.exists(leftover):
                os.remove(leftover)
    precision = "fp16" if args.fp16 else "fp32"
    print(f"=> {out}: ONNX opset {opset}, {precision}, {exporter} exporter;"
          f" onnxruntime on {figures}")  # fmt: skip


def described(loaded) -> dict:
    """What an exported file says of its network: arch, classes, preprocessing, epoch."""
    prep = inference.preprocessing(loaded.view)
    return {"arch": loaded.arch, "classes": loaded.names, "preprocessing": prep,
            "epoch": loaded.record.epoch}  # fmt: skip


def exported_record(loaded) -> checkpoints.ModelFile:
    """The model record to write as safetensors: the evaluated weights as loaded."""
    weights = checkpoints.cpu_state(loaded.model)
    view = loaded.view
    evaluation = {"resize": view.resize, "crop": view.crop, "interpolation": view.interpolation}
    _, averaged = loaded.record.evaluated()
    # The loaded network holds the evaluated weights, renamed to this tool's keys; as the
    # record's average too when they were -ema's, so the file says which they are.
    return checkpoints.ModelFile(weights, loaded.record.path, loaded.arch, loaded.names,
                                 evaluation=evaluation, epoch=loaded.record.epoch,
                                 average={"model": weights} if averaged else None)  # fmt: skip


def write_safetensors(loaded, out: str) -> None:
    """The weights and what they are, as one safetensors file."""
    try:
        import safetensors  # noqa: F401 - its absence is the user's to fix
    except ImportError:
        raise UsageError(
            "--format safetensors needs safetensors: pip install safetensors"
        ) from None
    checkpoints.write_safetensors(
        out, exported_record(loaded), inference.preprocessing(loaded.view)
    )


def write_hub(loaded, out: str, checkpoint: str) -> None:
    """A Hub folder: model.safetensors, config.json, README.md (written beside, then renamed)."""
    partial = f"{out}.{os.getpid()}.partial"
    os.makedirs(partial)
    try:
        write_safetensors(loaded, os.path.join(partial, checkpoints.HUB_WEIGHTS))
        config = {
            "library": "fb.resnet.pytorch",
            **described(loaded),
            "num_classes": len(loaded.names),
        }
        with open(os.path.join(partial, "config.json"), "w") as handle:
            json.dump(config, handle, indent=1)
        with open(os.path.join(partial, "README.md"), "w") as handle:
            handle.write(model_card(loaded, checkpoint))
        os.replace(partial, out)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def run_records(checkpoint: str) -> tuple[dict | None, list[dict]]:
    """The options (opts.json) and validation records (metrics.jsonl) of the run folder the
    checkpoint lies in, where it has them."""
    folder = os.path.dirname(os.path.abspath(checkpoint))
    options_used, records = None, []
    try:
        with open(os.path.join(folder, "opts.json")) as handle:
            options_used = json.load(handle)
        with open(os.path.join(folder, "metrics.jsonl")) as handle:
            records = [json.loads(line) for line in handle if line.strip()]
    except (OSError, ValueError):
        pass
    return options_used, [r for r in records if r.get("split") == "val" and r.get("iter") is None]


def training_command(options_used: dict) -> str:
    """python main.py with the flags opts.json records away from their defaults (as the run
    resolved them: -device and -memoryFormat auto are what they chose)."""
    defaults = {name: default for name, _, default, _ in options.FLAGS}
    flags = [f"-{name} {flag_text(value)}" for name, value in options_used.items()
             if name in defaults and value is not None
             and flag_text(value) != flag_text(defaults[name])]  # fmt: skip
    return "python main.py " + " ".join(flags)


def flag_text(value) -> str:
    """A flag's value as typed: true / false, 30,60,90, or the value."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def model_card(loaded, checkpoint: str) -> str:
    """The README of a Hub folder: what the network is, how it was trained and how well."""
    arch, prep = loaded.arch, inference.preprocessing(loaded.view)
    title = " ".join(models.describe(**arch)[-1:]).strip() or arch["netType"]
    options_used, records = run_records(checkpoint)
    epoch = loaded.record.epoch
    result = next((r for r in records if r.get("epoch") == epoch), None)
    epoch_text = "not recorded" if epoch is None else epoch
    lines = ["---", "library_name: pytorch", "pipeline_tag: image-classification",
             "tags: [image-classification, resnet, fb.resnet.torch]", "---", "",
             f"# {title}, trained on {arch['dataset']}", "",
             "| | |", "|---|---|",
             f"| network | {models.arch_flags(arch)} |",
             f"| classes | {len(loaded.names)} |",
             f"| epoch of these weights | {epoch_text} |"]  # fmt: skip
    if options_used:
        lines.append(f"| epochs trained | {options_used.get('nEpochs')} |")
    if result:
        top5 = "-" if result.get("top5") is None else f"{result['top5']:.2f}%"
        lines.append(f"| validation top-1 / top-5 error | {result['top1']:.2f}% / {top5} |")
    else:
        lines.append("| validation error | not recorded (no metrics.jsonl beside the checkpoint) |")
    lines.append(f"| preprocessing | {json.dumps(prep)} |")
    if options_used:
        lines += ["", "## Trained with", "", "```bash", training_command(options_used), "```"]
    lines += ["", "## Use", "", "```bash", "python scripts/classify.py THIS_FOLDER image.jpg",
              "python main.py -weights THIS_FOLDER -data DIR  # fine-tune", "```", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a model file, exported file or weights name")
    parser.add_argument("out", help="the file (onnx, safetensors) or folder (hub) to write")
    parser.add_argument("--format", choices=("onnx", "safetensors", "hub"), default="onnx")
    parser.add_argument("--images", nargs="+", default=[], help="onnx: real images to validate on")
    parser.add_argument("--fp16", action="store_true", help="onnx: half-precision weights")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help="onnx: the opset")
    args = parser.parse_args(argv)
    try:
        with stops_raise("exporting"):
            loaded = export(args)
    except Stopped as exc:
        return stopped_status(exc, f"nothing was written ({args.out})")
    except ValidationFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (UsageError, OSError) as exc:
        print(f"error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    if args.format != "onnx":
        print(f"=> {args.out}: {args.format}, {len(loaded.names)} classes")
    return 0


def export(args: argparse.Namespace):
    """Check the target and options, load the model and write it as args.format says."""
    check_target(args.out)
    if args.format == "onnx":
        check_opset(args.opset)
        if not args.images:
            raise UsageError("--format onnx checks the model on real images: give --images DIR")
    loaded = inference.loaded_model(args.checkpoint, torch.device("cpu"))
    if args.format == "onnx":
        write_onnx(loaded, args.out, args)
    elif args.format == "safetensors":
        write_safetensors(loaded, args.out)
    else:
        write_hub(loaded, args.out, args.checkpoint)
    return loaded


if __name__ == "__main__":
    sys.exit(main())
