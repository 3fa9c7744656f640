"""ONNX files of any size, written whole or not at all.

Protobuf cannot serialise a message over 2 GiB, so a model whose initializers pass
:data:`EXTERNAL_BYTES` keeps them in ONNX external data: one file named after the model
(``slim.onnx.data`` beside ``slim.onnx``), which onnxruntime and ``onnx.load`` find on their own.
Both files are written in a fresh folder beside the destination and moved into place only when
complete (the data file first), so a failed save leaves neither.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from ..util.atomic import current_umask, write_bytes_atomic

EXTERNAL_BYTES = 1_800_000_000  # initializer bytes from which the weights go to external data (limit: 2 GiB)


def data_name(dst: str | os.PathLike) -> str:
    """The external data file of ``dst``: its name with ``.data`` added."""
    return Path(dst).name + ".data"


@contextlib.contextmanager
def onnx_destination(dst: str | os.PathLike) -> Iterator[Path]:
    """A path with ``dst``'s file name in a fresh folder beside it. When the block succeeds, what
    was written there (the model and its external data file, if any) moves beside ``dst``, the
    model last; when it raises, nothing does."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.", dir=dst.parent))
    try:
        yield tmp / dst.name
        mode = 0o666 & ~current_umask()  # mkstemp/mkdtemp make files private: give what open() would
        for f in sorted(tmp.iterdir(), key=lambda p: p.name == dst.name):  # the model last
            os.chmod(f, mode)
            os.replace(f, dst.parent / f.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def initializer_bytes(model) -> int:
    """Bytes of a ModelProto's initializers (each under 2 GiB: ByteSize works on each)."""
    return sum(t.ByteSize() for t in model.graph.initializer)


def save_onnx(model, dst: str | os.PathLike) -> Path:
    """Write the ModelProto ``model`` to ``dst``: one deterministic file, or with its weights in
    ``dst``'s external data file when they pass :data:`EXTERNAL_BYTES`. ``model`` is not changed."""
    import onnx

    if initializer_bytes(model) < EXTERNAL_BYTES:
        return write_bytes_atomic(dst, model.SerializeToString(deterministic=True))
    copy = onnx.ModelProto()
    copy.CopyFrom(model)  # save_model moves the weights out of the proto it is given
    with onnx_destination(dst) as path:
        onnx.save_model(copy, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name(dst), size_threshold=1024)
    return Path(dst)
