"""Fetch cut-out photographs of objects from Debian's ``tuxpaint-stamps-default`` package: unlabelled
images to calibrate and distil a CNN on, beside the few real photos (issue 21).

Tux Paint's rubber stamps are mostly photographs of single objects on a transparent background
(birds, mammals, fruit, vegetables, flowers, tools, clothes, vehicles: ImageNet's kind of subject),
GPL-2. Pasted on crops of the calibration photos (``tools/vision_data.py`` ``composites``) they give
hundreds of distinct objects where the vision cache has 32 calibration photos. Letters, signs,
symbols and the cartoon sets are left out (``SKIP``).

The .deb comes from the Debian archive (a registry this workplace reaches), pinned by version and
sha256; it is unpacked here (ar, then tar.xz) without dpkg or apt.

    python tools/fetch_stamps.py          # into ~/.cache/graphprune/vision/stamps (or $GRAPHPRUNE_VISION)
"""
from __future__ import annotations

import io
import json
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fetch_corpus import FetchError, sha256  # noqa: E402  (same pinning rules)
from vision_data import vision_dir  # noqa: E402

DEB = ("http://deb.debian.org/debian/pool/main/t/tuxpaint-stamps/tuxpaint-stamps-default_2022.06.04-1_all.deb",
       "6db6c1bfc870a47f1499d6203b083522eacb57c5f9c87d468f2e92eb6d9d5f34")
PREFIX = "./usr/share/tuxpaint/stamps/"
SKIP = re.compile(r"/(alphabets|outlined|filled|cartoon|symbols|math|00_symbols|roadsigns|flags|shapes|operators|"
                  r"chess|music)/")
EXPECTED = 401  # PNG stamps left after SKIP in this version


def _ar_member(blob: bytes, prefix: str) -> bytes:
    """The first member of an ar archive (a .deb) whose name starts with ``prefix``."""
    if not blob.startswith(b"!<arch>\n"):
        raise FetchError("the .deb is not an ar archive")
    pos = 8
    while pos + 60 <= len(blob):
        name, size = blob[pos:pos + 16].decode().strip().rstrip("/"), int(blob[pos + 48:pos + 58])
        if name.startswith(prefix):
            return blob[pos + 60:pos + 60 + size]
        pos += 60 + size + (size & 1)
    raise FetchError(f"the .deb has no {prefix}* member")


def fetch(root: Path) -> list[Path]:
    """Download (or reuse) the pinned .deb and write its photo stamps to ``root/stamps``."""
    url, want = DEB
    deb = root / "wheels" / url.rsplit("/", 1)[1]
    deb.parent.mkdir(parents=True, exist_ok=True)
    if not (deb.is_file() and sha256(deb) == want):
        part = deb.with_name(deb.name + ".part")
        with urllib.request.urlopen(url, timeout=300) as r, open(part, "wb") as out:
            out.write(r.read())
        if (got := sha256(part)) != want:
            part.unlink()
            raise FetchError(f"{url}: sha256 {got}, pinned {want}")
        part.replace(deb)
    out_dir, written = root / "stamps", []
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_ar_member(deb.read_bytes(), "data.tar")), mode="r:*") as tar:
        for m in sorted(tar.getmembers(), key=lambda m: m.name):
            if not (m.isfile() and m.name.startswith(PREFIX) and m.name.endswith(".png")) or SKIP.search(m.name):
                continue
            dst = out_dir / m.name[len(PREFIX):].replace("/", "__")
            if not dst.is_file():
                dst.write_bytes(tar.extractfile(m).read())
            written.append(dst)
    if len(written) != EXPECTED:
        raise FetchError(f"{deb.name} gave {len(written)} photo stamps, expected {EXPECTED}")
    (root / "stamps.json").write_text(json.dumps({"deb": url, "sha256": want, "licence": "GPL-2",
                                                  "stamps": [p.name for p in written]}, indent=1) + "\n")
    return written


def main() -> int:
    try:
        got = fetch(vision_dir())
    except (FetchError, OSError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{len(got)} photo stamps in {vision_dir() / 'stamps'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
