"""SIGTERM must unwind the trainer (finally blocks, exit handlers) so vLLM engine processes get shut down."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path


def test_sigterm_runs_finally_blocks_and_exits_143(tmp_path: Path) -> None:
    marker = tmp_path / "cleaned-up"
    script = textwrap.dedent(
        f"""
        import time
        from megatron_tulu.cli import exit_on_sigterm
        exit_on_sigterm()
        try:
            print("ready", flush=True)
            time.sleep(60)
        finally:
            open({str(marker)!r}, "w").close()
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM
    assert marker.exists()
