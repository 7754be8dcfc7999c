"""What a run that fails after training began says, in one line: the cause (its data
went away, the disk filled up) and what was kept (the checkpoint saved on the way out,
callbacks/resume.py) with how to continue it."""

from __future__ import annotations

import errno
from pathlib import Path

from ssl_zoo.errors import UserError, one_line

# A write that fails for want of space: a full disk, a quota, a file size limit (ulimit -f).
NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


class DiskFullError(UserError):
    """A file of the run could not be written: no space left for it."""


def is_no_space(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno in NO_SPACE


def is_mid_run_failure(err: BaseException) -> bool:
    """A failure of the world around a run that was going well (its data went away, a disk
    filled up): worth saving the run at its last step boundary, to continue once fixed.
    Not a diverging run or a refused checkpoint: those say themselves what was kept."""
    from ssl_zoo.datasets.images import DataError

    return isinstance(err, DataError) or is_no_space(err)


def disk_full(err: OSError, path: str | None = None, run_dir: Path | None = None) -> DiskFullError:
    """``err`` (ENOSPC, EDQUOT, EFBIG) as one line naming the file (or, when the writer did
    not say which, the run directory) and where to free space."""
    name = err.filename or path
    what = f"cannot write {name}" if name else f"a write under {run_dir or 'the run directory'} failed"
    where = Path(str(name)).parent if name else (run_dir or "the run directory")
    return DiskFullError(f"{what}: {err.strerror or err} ([Errno {err.errno}]): free space in {where}, "
                         "or point hydra.run.dir elsewhere")


def stopped(err: BaseException, saved: tuple[int, str] | None, newest: str | None, run_dir: Path) -> UserError:
    """The error that ends a run which failed after it started training, saying what was kept."""
    cause = disk_full(err, run_dir=run_dir) if is_no_space(err) else err
    # The same command continues the run in its directory (the default one has the time in it).
    resume = f"once that is fixed, add hydra.run.dir={run_dir.resolve()} resume=auto to the same command"
    if saved is not None:
        step, path = saved
        kept = f"Saved step {step} to {path}; {resume}"
    elif newest:
        kept = f"The newest checkpoint is {newest}; {resume}"
    else:
        kept = "No checkpoint was written"
    # The same error class, so that callers can still tell a DataError from others.
    stopped_err = type(cause).__new__(type(cause))
    stopped_err.__dict__.update(vars(cause))
    stopped_err.args = (f"{one_line(cause).rstrip('.')}. {kept}",)
    return stopped_err
