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
import lzma
import re
import shutil
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
EXPECTED = 401  # PNG stamps left after SKIP in this version (tools/stamp_data.py drops 5 under 24 px: 396)


def _ar_member(blob: bytes, prefix: str) -> bytes:
    """The first member of an ar archive (a .deb) whose name starts with ``prefix``."""
    if not blob.startswith(b"!<arch>\n"):
        raise FetchError("the .deb is not an ar archive")
    pos = 8
    while pos + 60 <= len(blob):
        header = blob[pos:pos + 60]
        try:
            name, size = header[:16].decode("ascii").strip().rstrip("/"), int(header[48:58])
        except ValueError:  # UnicodeDecodeError too
            size = -1
        if size < 0 or header[58:60] != b"`\n" or pos + 60 + size > len(blob):
            raise FetchError(f"the .deb's ar header at byte {pos} is damaged or its member is cut short")
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
        try:
            with urllib.request.urlopen(url, timeout=300) as r, open(part, "wb") as out:
                shutil.copyfileobj(r, out)
            if (got := sha256(part)) != want:
                raise FetchError(f"{url}: sha256 {got}, pinned {want}")
            part.replace(deb)
        finally:
            part.unlink(missing_ok=True)  # no partial download is left behind
    out_dir, written = root / "stamps", []
    out_dir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(_ar_member(deb.read_bytes(), "data.tar")), mode="r:*") as tar:
        for m in tar:  # archive order: a compressed tar read out of order is decompressed again
            if not (m.isfile() and m.name.startswith(PREFIX) and m.name.endswith(".png")) or SKIP.search(m.name):
                continue
            dst = out_dir / m.name[len(PREFIX):].replace("/", "__")
            if not (dst.is_file() and dst.stat().st_size == m.size):  # a file cut short by a kill is written again
                tmp = dst.with_name(dst.name + ".part")
                tmp.write_bytes(tar.extractfile(m).read())
                tmp.replace(dst)
            written.append(dst)
    written.sort()
    if len(written) != EXPECTED:
        raise FetchError(f"{deb.name} gave {len(written)} photo stamps, expected {EXPECTED}")
    (root / "stamps.json").write_text(json.dumps({"deb": url, "sha256": want, "licence": "GPL-2",
                                                  "stamps": [p.name for p in written]}, indent=1) + "\n")
    return written


def main() -> int:
    try:
        got = fetch(vision_dir())
    except (FetchError, OSError, tarfile.TarError, lzma.LZMAError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    print(f"{len(got)} photo stamps in {vision_dir() / 'stamps'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
