"""Subprocess entry point of :func:`fcn_dist.bench.model.memory_probe` (prints one JSON line)."""

from __future__ import annotations

import json
import sys


def main(argv: list[str] | None = None) -> None:
    """Run the configuration given as JSON in argv[1] and print its memory figures."""
    from fcn_dist.bench.model import run_memory_case

    config = json.loads((argv or sys.argv)[1])
    print(json.dumps(run_memory_case(config)))


if __name__ == "__main__":
    main()
