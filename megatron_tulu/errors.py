"""One style for user errors in every command: ``error: <what, where, what to do>``.

Why: a bad config key, a damaged file or an impossible layout is something the user fixes; thirty
lines of traceback per rank bury the one useful line. A user error is printed once on stderr (by the
first rank of a torchrun job that reports that message), exits with code 2 and shows no traceback
unless ``MEGATRON_TULU_DEBUG=1``. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
import traceback
import warnings
from pathlib import Path

USER_ERROR_EXIT = 2


class UserError(Exception):
    """A problem the user can fix (config, input file, checkpoint); its text is the whole message."""


class CheckpointError(UserError):
    """A checkpoint is missing, incomplete or damaged; the message names the directory or file."""


class ConfigError(UserError):
    """An override or config value is not valid for the schema."""


# Project exception classes that mean "bad input" (matched by name so that this module imports
# nothing heavy). ValueError/FileNotFoundError raised by the project's own code count too.
_USER_ERROR_NAMES = {
    "LayoutError",
    "PlanError",
    "InputError",
    "UnknownDatasetError",
    "InvalidGroundTruthError",
    "MalformedRowError",
    "UnknownNameError",
    "HFCheckpointError",
    "ChatFormatError",
    "DataError",
    "RowError",
    # Hydra / OmegaConf: bad override syntax, unknown key, wrong type
    "ConfigCompositionException",
    "OverrideParseException",
    "MissingConfigException",
    "ConfigKeyError",
    "ConfigAttributeError",
    "ValidationError",
    "GrammarParseError",
}

_PACKAGE_DIR = str(Path(__file__).resolve().parent)


def _raised_by_project(exc: BaseException) -> bool:
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and last.tb_frame.f_code.co_filename.startswith(_PACKAGE_DIR)


def is_user_error(exc: BaseException) -> bool:
    """Whether ``exc`` is a bad-input error rather than a bug."""
    names = {cls.__name__ for cls in type(exc).__mro__}
    if isinstance(exc, UserError) or names & _USER_ERROR_NAMES:
        return True
    return isinstance(exc, ValueError | FileNotFoundError | NotADirectoryError) and _raised_by_project(exc)


def error_text(exc: BaseException) -> str:
    """One line (or a few, for lists of problems) starting with ``error:``."""
    text = str(exc).strip()
    if isinstance(exc, KeyError) and len(exc.args) == 1:
        text = str(exc.args[0])  # KeyError's str() adds quotes
    if type(exc).__name__ in {"ConfigCompositionException", "OverrideParseException"} and exc.__cause__:
        cause = str(exc.__cause__).strip()
        text = f"{text} ({cause})" if cause and cause not in text else text
    text = text or type(exc).__name__
    return text if text.startswith("error:") else f"error: {text}"


def _first_reporter(text: str) -> bool:
    """True for exactly one rank per message in a torchrun job (every rank often hits the same
    config error); always True outside torchrun."""
    run_id = os.environ.get("TORCHELASTIC_RUN_ID")
    if not run_id or os.environ.get("WORLD_SIZE", "1") == "1":
        return True
    # The local ranks of one job share their launcher (parent) process; the run id alone is often
    # the default "none".
    job = f"{run_id}\0{os.getppid()}\0{os.environ.get('MASTER_PORT', '')}"
    digest = hashlib.sha1(f"{job}\0{text}".encode()).hexdigest()[:16]
    marker = Path(tempfile.gettempdir()) / f"megatron_tulu_error_{os.getuid()}_{digest}"
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        return False
    except OSError:
        return True
    return True


def report(exc: BaseException) -> int:
    """Print a user error (once) and return the exit code; re-raise anything else."""
    if not is_user_error(exc):
        raise exc
    text = error_text(exc)
    if os.environ.get("MEGATRON_TULU_DEBUG") == "1":
        traceback.print_exception(exc, file=sys.stderr)
    if _first_reporter(text):
        rank = os.environ.get("RANK")
        prefix = f"[rank {rank}] " if rank not in (None, "0") else ""
        print(prefix + text, file=sys.stderr, flush=True)
    return USER_ERROR_EXIT


# Third-party import notices that say nothing the user can act on (CPU runs never have Apex/TE).
_NOISE = [
    r".*Apex is not installed.*",
    r".*Transformer Engine and Apex are not installed.*",
    r".*Transformer Engine is not installed.*",
    r".*transformer_engine.*not installed.*",
]


def silence_import_noise() -> None:
    """Drop the known "Apex / Transformer Engine not installed" warnings; other warnings stay."""
    for pattern in _NOISE:
        warnings.filterwarnings("ignore", message=pattern)
