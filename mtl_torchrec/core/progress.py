"""How every progress bar of the package is made: a live tqdm bar on a terminal, whole lines in a log.

On a terminal (stderr is a TTY) a bar redraws itself in place with ``\\r``, as tqdm does. In a job's
log file, under torchx or in CI those redraws pile up into one unreadable line, so there the bar
is a :class:`LogLines` bar instead: tqdm's documented custom front end (a subclass created with
``gui=True``, so no terminal status printer exists, redefining ``display``, ``clear`` and
``close``) that writes tqdm's own status text (``ncols=0``: the numbers without the meter) as one
line at most every :data:`LOG_EVERY_S` seconds (tqdm's ``mininterval``) and a last line when it
closes. Rates, times and postfixes are tqdm's; nothing here measures progress itself.

Example::

    bar = progress_bar(total=len(batches), desc="scoring", unit="batch", enabled=progress)
    for batch in batches:
        ...
        bar.update(1)
    bar.close()
    # in a log file: "scoring:  40% 4/10 [00:15<00:22,  0.27batch/s]" every 15 s, then the 10/10 line
"""

from __future__ import annotations

import sys
from typing import Any, Iterable, Optional

from tqdm import tqdm

# Seconds between two lines of a bar written to a log (not a terminal).
LOG_EVERY_S = 15.0


class LogLines(tqdm):
    """A tqdm bar written as whole lines (no ``\\r``): one every ``mininterval`` seconds (default
    :data:`LOG_EVERY_S`) while it advances, and the final counts when it closes. Takes tqdm's
    arguments (``gui`` is set, ``ncols`` is 0, ``file`` is stderr by default)."""

    # No tqdm monitor thread: its forced redraws come on top of the interval's own lines, one or two
    # seconds apart in a log. With miniters=1 every update checks the interval, so none is needed.
    monitor_interval = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("mininterval", LOG_EVERY_S)
        kwargs["miniters"] = 1
        kwargs["ncols"] = 0
        kwargs["gui"] = True
        self._shown_n: Optional[float] = None
        super().__init__(*args, **kwargs)

    def display(self, msg: Optional[str] = None, pos: Optional[int] = None) -> bool:
        """Writes the bar's status (or ``msg``) as one line; an empty ``msg`` (tqdm clearing the
        bar) writes nothing."""
        if msg == "":
            return True
        self.fp.write((self.format_meter(**self.format_dict) if msg is None else msg) + "\n")
        self.fp.flush()
        self._shown_n = self.n
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to clear: the lines already written stay in the log."""

    def close(self) -> None:
        """Writes the final counts (unless the last line already shows them, or nothing advanced), then
        closes."""
        if not self.disable and self.n and self.n != self._shown_n:
            self.display()
        super().close()


def stderr_is_terminal() -> bool:
    """Whether stderr is an interactive terminal (False for a file, a pipe, a closed stream)."""
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):
        return False


def progress_bar(iterable: Optional[Iterable[Any]] = None, *, desc: str, total: Optional[float] = None,
                 unit: str = "it", enabled: bool = True, lines: bool = False) -> tqdm:
    """A progress bar on stderr: tqdm's live bar (cleared when it closes) when stderr is a terminal,
    else :class:`LogLines` (a line every :data:`LOG_EVERY_S` seconds and a last one). ``enabled=False``
    gives a disabled bar (updates cost nothing, nothing is printed) unless ``lines``; ``lines`` asks
    for log lines even on a terminal (progress that must stay visible without a bar)."""
    if lines or (enabled and not stderr_is_terminal()):
        return LogLines(iterable, desc=desc, total=total, unit=unit)
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=not enabled, leave=False)
