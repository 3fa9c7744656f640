"""tools/fetch_stamps.py and tools/stamp_data.py: the .deb is unpacked without dpkg, and a composite is
its background with one stamp pasted where the stamp is opaque, the same for the same seed."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import fetch_stamps  # noqa: E402
import stamp_data  # noqa: E402
from fetch_corpus import FetchError  # noqa: E402


def _ar(members: list[tuple[str, bytes]]) -> bytes:
    """An ar archive as a .deb is one: 60-byte headers, odd-sized members padded to even."""
    out = b"!<arch>\n"
    for name, data in members:
        out += f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode() + data
        out += b"\n" if len(data) % 2 else b""
    return out


def test_the_deb_member_is_found_past_odd_sized_members():
    blob = _ar([("debian-binary", b"2.0\n"), ("control.tar.xz", b"abc"), ("data.tar.xz", b"payload")])
    assert fetch_stamps._ar_member(blob, "data.tar") == b"payload"
    assert fetch_stamps._ar_member(blob, "control") == b"abc"
    with pytest.raises(FetchError, match="no data.tar"):
        fetch_stamps._ar_member(_ar([("debian-binary", b"2.0\n")]), "data.tar")
    with pytest.raises(FetchError, match="not an ar archive"):
        fetch_stamps._ar_member(b"PK\x03\x04", "data.tar")


def test_a_composite_is_the_background_with_the_opaque_stamp_normalised():
    stamp = torch.zeros(4, 40, 20)
    stamp[:3] = torch.tensor([1.0, 0.5, 0.0]).view(3, 1, 1)
    stamp[3, :, :10] = 1.0  # left half opaque, right half transparent
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    backgrounds = torch.full((2, 3, 64, 64), 7.0)
    out = stamp_data.composites((stamp,), backgrounds, 5, mean, std, seed=3)
    assert out.shape == (5, 3, 64, 64) and torch.equal(backgrounds, torch.full((2, 3, 64, 64), 7.0))
    want = (torch.tensor([1.0, 0.5, 0.0]) - 0.5) / 0.25  # the stamp's colour in the model's normalised space
    for img in out:
        pasted = (img != 7.0).any(0)
        assert 0 < pasted.sum() < 64 * 64 * 0.95 / 2 + 64  # one stamp, at most 95% of the side, half opaque
        inside = img[:, pasted]
        fully = (inside - want.view(3, 1)).abs().max(0).values < 1e-5
        assert fully.float().mean() > 0.5  # mostly the opaque colour, blended only at the resized edge
    assert torch.equal(out, stamp_data.composites((stamp,), backgrounds, 5, mean, std, seed=3))
    assert not torch.equal(out, stamp_data.composites((stamp,), backgrounds, 5, mean, std, seed=4))
