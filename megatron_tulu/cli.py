"""`megatron-tulu <command> [args...]`: a thin dispatcher.

Each command lives in its own module of :mod:`megatron_tulu.commands` and parses its own arguments
(argparse for tools, Hydra overrides for trainers); the one a command line names is imported only
then, so importing the CLI stays cheap and commands stay independent.
"""

from __future__ import annotations

import importlib
import os
import signal
import sys
import threading

# command -> one-line help. `megatron-tulu foo-bar ARGS` runs megatron_tulu.commands.foo_bar:main(ARGS).
COMMANDS: dict[str, str] = {
    "build-tiny": "build the embedded tiny Llama + tokenizer as an HF dir",
    "convert": "HF Llama <-> Megatron distributed checkpoint",
    "generate": "greedy/sampled generation on the Megatron model",
    "sft": "supervised fine-tuning (Tülu 3 sum loss, packing)",
    "dpo": "preference optimisation (length-normalized DPO, cached reference)",
    "rlvr": "PPO/GRPO with verifiable rewards and vLLM rollouts",
    "pipeline": "SFT -> DPO -> RLVR with held-out accuracy per stage",
    "verify": "score generations with the verifiable rewards",
    "eval": "benchmark scores (GSM8K/MATH/IFEval) via vLLM",
    "decontaminate": "8-gram decontamination of training data",
    "checkpoint": "checkpoint tools: `checkpoint verify DIR` checks every file against its checksum",
    "plan-refit": "print the learner->vLLM weight refit plan and its cost",
    "synthetic-data": "write the embedded synthetic SFT/DPO/RLVR jsonl files (GSM8K-/IFEval-style)",
}


def command_module(name: str) -> str:
    return "megatron_tulu.commands." + name.replace("-", "_")


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = ["usage: megatron-tulu <command> [args...]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {desc}" for name, desc in COMMANDS.items()]
    return "\n".join(lines)


def exit_on_sigterm() -> None:
    """Turn SIGTERM (Slurm preemption, `kill`, `timeout`) into SystemExit so that `finally` blocks and
    exit handlers run: without it the process dies at once and its vLLM engine processes live on as
    orphans holding their memory."""

    from megatron_tulu.engine.stop_request import defer_sigterm  # stdlib only: cheap

    def handler(signum: int, frame: object) -> None:
        # a trainer in its step loop takes a first SIGTERM as a stop request: a checkpoint at the
        # step boundary, then a clean exit (engine/stop_request.py); otherwise unwind now
        if defer_sigterm():
            return
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():  # signal.signal refuses other threads
        signal.signal(signal.SIGTERM, handler)


def _setup_process() -> None:
    """Process-wide set-up before any command module is imported: known third-party import noise
    off; helper processes forked from here die with us (engine/hygiene.py); a torchrun rank dies
    with its launcher, so a SIGKILLed ``torchrun`` leaves no rank (and no rank's helpers) behind."""
    from megatron_tulu.engine import hygiene
    from megatron_tulu.errors import silence_import_noise

    silence_import_noise()
    hygiene.install()
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        hygiene.die_with_parent(signal.SIGKILL, expected_parent=os.getppid())


def main(argv: list[str] | None = None) -> int:
    """Dispatch; user errors (bad config, input or checkpoint) end as one ``error:`` line, exit 2."""
    from megatron_tulu.errors import report

    argv = list(sys.argv[1:] if argv is None else argv)
    exit_on_sigterm()
    _setup_process()
    if not argv or argv[0] in {"-h", "--help", "help"}:
        print(_usage())
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        from megatron_tulu.engine.gpu_stack import check_gpu_stack

        check_gpu_stack()  # a CPU venv on a GPU node: refused before any work (engine/gpu_stack.py)
        result = importlib.import_module(command_module(name)).main(rest)
    except Exception as exc:  # report() re-raises everything that is not a user error
        return report(exc)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
