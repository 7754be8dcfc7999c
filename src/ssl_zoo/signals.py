"""Preemption signals: the main process turns them into a flag, data workers ignore them.

Clusters and shells deliver a stop to the whole process group (GNU ``timeout``, SLURM
preemption and ``scancel``, Kubernetes pod termination), so it reaches the DataLoader
workers as well as the main process. A worker killed by it makes the main process raise
"DataLoader worker ... is killed by signal" from torch's SIGCHLD handler, at any line,
before anything is saved. Hence:

- every DataLoader ssl_zoo creates starts its workers with :class:`WorkerInit`, which
  ignores the stop signals: the main process owns shutdown, and the loader ends its
  workers itself when it is done with them (they also exit when the main process dies);
- the main process's handler only records the signal (:func:`catch`); the run saves and
  stops at its next safe point (``callbacks/resume.py``), and evaluation passes stop early
  when one is pending (:func:`pending`);
- ``ssl-zoo train`` catches them from its first line (``cli/train_app.py``), before the
  slow imports, so a signal at start is kept too; workers forked before their init
  function runs inherit the flag handler, which is harmless there.

This module imports only the standard library: it runs before torch is imported.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from typing import Any

#: What ``ssl-zoo train`` catches before its configuration is read (the defaults of
#: ``callbacks.resume.preempt_signals``); ``train`` then keeps the configured ones.
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")
#: Ignored in data workers: the stop signals a cluster may send to the group (SIGUSR2:
#: submitit's warning) and Ctrl-C's SIGINT (the main process handles KeyboardInterrupt).
WORKER_IGNORED = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2)

_received: list[int] = []  # in order of arrival, each signal once
_caught: dict[int, Any] = {}  # signal -> the handler it had before catch()
_held = False  # caught for the life of the process (the CLI): release() keeps them


def _on_signal(signum: int, frame: Any) -> None:
    # Only a flag: anything more inside a signal handler would run in the middle of a step.
    if signum not in _received:
        _received.append(signum)


def catch(signals: Iterable[signal.Signals | int | str]) -> None:
    """Record ``signals`` instead of their default action (idempotent). From the main
    thread only; elsewhere nothing changes."""
    for sig in signals:
        signum = signal.Signals[sig] if isinstance(sig, str) else signal.Signals(sig)
        if signum in _caught:
            continue
        try:
            _caught[signum] = signal.signal(signum, _on_signal)
        except ValueError:  # not the main thread
            return


def hold(signals: Iterable[signal.Signals | int | str] = DEFAULT_SIGNALS) -> None:
    """Catch ``signals`` until the process exits (``ssl-zoo train``): a second signal while
    the run writes its summary must not kill it half-way either."""
    global _held
    _held = True
    catch(signals)


def keep_only(signals: Iterable[signal.Signals | int | str]) -> None:
    """Catch ``signals`` and give every other caught signal its previous handler back; one
    of those that already arrived is delivered again, to that handler."""
    wanted = {signal.Signals[s] if isinstance(s, str) else signal.Signals(s) for s in signals}
    for signum in [s for s in _caught if s not in wanted]:
        signal.signal(signum, _caught.pop(signum))
        if signum in _received:
            _received.remove(signum)
            os.kill(os.getpid(), signum)
    catch(wanted)


def release() -> None:
    """Give every caught signal its previous handler back and forget what arrived, unless
    they are held (``train`` called in a process that goes on, e.g. a test)."""
    if _held:
        return
    for signum, previous in _caught.items():
        if signal.getsignal(signum) == _on_signal:
            signal.signal(signum, previous)
    _caught.clear()
    _received.clear()


def pending() -> int | None:
    """The first caught signal that arrived in this process, or None."""
    return _received[0] if _received else None


def received(signum: int | None) -> bool:
    return signum is not None and signum in _received


class WorkerInit:
    """``worker_init_fn`` of ssl_zoo's DataLoaders: ignore the stop signals, then seed as
    Lightning would (``seed_everything(workers=True)`` adds its function only to loaders
    without one)."""

    def __init__(self, rank: int = 0) -> None:
        self.rank = rank

    def __call__(self, worker_id: int) -> None:
        for signum in WORKER_IGNORED:
            signal.signal(signum, signal.SIG_IGN)
        if int(os.environ.get("PL_SEED_WORKERS", 0)):
            from lightning.fabric.utilities.seed import pl_worker_init_function

            pl_worker_init_function(worker_id, rank=self.rank)
