"""The --calib data of ``graphprune prune`` for PyTorch models: .npz arrays named by input, a folder of
.npz batches, or for a transformers folder a .txt file cut by its tokenizer (graphprune.hf.text_batches)."""
from __future__ import annotations

from pathlib import Path

from ..errors import GraphpruneError


def npz_batches(path: str, batch: int) -> list[dict]:
    """An .npz of arrays named by model input, each with the samples along dim 0, cut into
    batches; or a folder of .npz files, one batch each."""
    import numpy as np

    if batch < 1:
        raise GraphpruneError(f"--calib-batch must be >= 1, got {batch}")
    p = Path(path)
    files = sorted(p.glob("*.npz")) if p.is_dir() else [p]
    if p.is_dir() and not files:
        raise GraphpruneError(f"calibration folder '{path}' holds no .npz files")
    out = []
    for f in files:
        try:
            data = dict(np.load(f))
        except (OSError, ValueError) as exc:
            raise GraphpruneError(f"cannot read calibration data '{f}': {exc}. Give an .npz file (or a folder of them) "
                                  "whose arrays are named by the model's inputs, samples along dim 0") from exc
        if not data:
            raise GraphpruneError(f"calibration file '{f}' holds no arrays")
        if p.is_dir():
            out.append(data)
            continue
        n = min(len(v) for v in data.values())
        out += [{k: v[i:i + batch] for k, v in data.items()} for i in range(0, n, batch)]
    return out


def torch_calib(ns, src) -> list:
    """Calibration batches in the module's input form: ``.npz`` arrays named by input (or by
    position: ``input_0``...), a folder of ``.npz`` batches, or for a transformers folder with a
    tokenizer, a ``.txt`` file cut into sequences of --seq-len tokens."""
    import torch

    if str(ns.calib).endswith(".txt"):
        return text_calib(ns, src)
    batches = npz_batches(ns.calib, ns.calib_batch)
    names = list(src.kwargs) if src.kwargs else None
    out = []
    for b in batches:
        tensors = {k: torch.from_numpy(v) for k, v in b.items()}
        if names is not None:
            missing = set(names) - set(tensors)
            extra = set(tensors) - set(names)
            if extra or (missing - {"attention_mask", "token_type_ids"}):
                raise GraphpruneError(f"--calib arrays are {sorted(tensors)}; the model takes {names}")
            out.append(tensors)
        else:
            keys = sorted(tensors, key=lambda k: (len(k), k))
            if len(keys) != len(src.args):
                raise GraphpruneError(f"--calib has {len(keys)} array(s) {keys}; the model takes {len(src.args)} "
                                      "positional input(s) (name them input_0, input_1, ... in order)")
            out.append(tuple(tensors[k] for k in keys))
    return out


def text_calib(ns, src) -> list[dict]:
    """A .txt --calib cut by the model's tokenizer (graphprune.hf.text_batches: one code path)."""
    if src.path is None or not src.is_hf:
        raise GraphpruneError("--calib FILE.txt needs a Hugging Face model folder with its tokenizer")
    try:
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(src.path), local_files_only=True)
    except Exception as exc:
        raise GraphpruneError(f"no tokenizer in '{src.path}' to cut {ns.calib} into tokens: {exc}") from exc
    from ..hf import text_batches

    samples = ns.calib_samples if ns.calib_samples is not None else (None if ns.calib_tokens else 32)
    return text_batches(tok, Path(ns.calib), seq_len=ns.seq_len, batch_size=ns.calib_batch,
                        calib_tokens=ns.calib_tokens, samples=samples,
                        attention_mask="attention_mask" in src.kwargs)
