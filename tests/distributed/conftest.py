import subprocess
import sys

import pytest

from tests.helpers import REPO


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """The embedded tiny Llama as an HF directory, built by ``megatron-tulu build-tiny``."""
    out = tmp_path_factory.mktemp("tiny") / "tiny"
    subprocess.run(
        [sys.executable, "-m", "megatron_tulu.cli", "build-tiny", "--out", str(out)], check=True, cwd=REPO
    )
    return out
