"""``graphprune zoo``: the reference models (graphprune.zoo, from the repository's models/)."""
from __future__ import annotations

import argparse
import json

from ..util.tables import table
from ..zoo import ZOO


def arguments(z: argparse.ArgumentParser) -> None:
    """``graphprune zoo``'s flags."""
    z.add_argument("--json", action="store_true")


def run(ns: argparse.Namespace) -> int:
    if ns.json:
        print(json.dumps([{"name": e.name, "description": e.description} for e in ZOO.values()], indent=1))
        return 0
    print(table(["name", "description"], [[e.name, e.description] for e in ZOO.values()]))
    return 0
