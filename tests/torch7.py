"""A writer of Torch7's binary serialisation (torch.save in Lua), enough to build the .t7
files of fb.resnet.torch's networks in the tests: tables, strings, numbers, FloatTensors and
nn modules (an nn module is a Torch object whose data is its field table)."""

import struct

import numpy as np
import torch

NIL, NUMBER, STRING, TABLE, TORCH, BOOLEAN = 0, 1, 2, 3, 4, 5


class LuaObject:
    """A Torch object of class `name` with fields (e.g. nn.SpatialConvolution)."""

    def __init__(self, name: str, **fields):
        self.name = name
        self.fields = fields


class Writer:
    def __init__(self, stream):
        self.stream = stream
        self.index = 0

    def raw(self, fmt: str, *values) -> None:
        """Little-endian, unpadded: int 4 bytes, long ('q') 8, double 8, as Torch7 on x86."""
        self.stream.write(struct.pack("<" + fmt, *values))

    def string(self, text: str) -> None:
        data = text.encode()
        self.raw("i", len(data))
        self.stream.write(data)

    def next_index(self) -> int:
        self.index += 1
        return self.index

    def obj(self, value) -> None:
        if value is None:
            self.raw("i", NIL)
        elif isinstance(value, bool):
            self.raw("ii", BOOLEAN, int(value))
        elif isinstance(value, int | float):
            self.raw("id", NUMBER, float(value))
        elif isinstance(value, str):
            self.raw("i", STRING)
            self.string(value)
        elif isinstance(value, torch.Tensor):
            self.tensor(value)
        elif isinstance(value, LuaObject):
            self.torch_header(value.name)
            self.table(value.fields)
        elif isinstance(value, list):
            self.table({i + 1: item for i, item in enumerate(value)})
        elif isinstance(value, dict):
            self.table(value)
        else:
            raise TypeError(f"cannot write {type(value).__name__}")

    def torch_header(self, name: str) -> None:
        self.raw("ii", TORCH, self.next_index())
        self.string("V 1")
        self.string(name)

    def table(self, fields: dict) -> None:
        self.raw("iii", TABLE, self.next_index(), len(fields))
        for key, value in fields.items():
            self.obj(key)
            self.obj(value)

    def tensor(self, value: torch.Tensor) -> None:
        data = value.detach().float().contiguous().numpy()
        self.torch_header("torch.FloatTensor")
        self.raw("i", data.ndim)
        strides = [s // data.itemsize for s in data.strides]
        self.raw(f"{data.ndim}q{data.ndim}qq", *data.shape, *strides, 1)
        self.torch_header("torch.FloatStorage")
        self.raw("q", data.size)
        self.stream.write(data.astype(np.float32).tobytes())


def save(path, value) -> None:
    """torch.save(path, value) as Lua Torch wrote it."""
    with open(path, "wb") as stream:
        Writer(stream).obj(value)
