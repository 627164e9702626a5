"""Progress bars on stderr for anything longer than a few seconds.

tqdm when it is installed and stderr is a terminal; otherwise a bar that does
nothing, so logs and CI output stay clean.
"""

from __future__ import annotations

import sys


class _Quiet:
    n = 0

    def update(self, n: float = 1) -> None:
        self.n += n

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        pass


def bar(total: float | None, desc: str, unit: str = "it", **kw):
    """A tqdm bar (or a silent stand-in); use as a context manager."""
    if not sys.stderr.isatty():
        return _Quiet()
    try:
        from tqdm import tqdm
    except ImportError:
        return _Quiet()
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, leave=False,
                dynamic_ncols=True, unit_scale=unit != "s", **kw)


class Clock:
    """A bar over seconds, advanced to an absolute elapsed time (``to(t)``)."""

    def __init__(self, seconds: float, desc: str):
        self.bar = bar(round(seconds, 1), desc, unit="s", bar_format=(
            "{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s {postfix}"))
        self.done = 0.0

    def to(self, t: float, postfix: str = "") -> None:
        t = min(t, self.bar.total if hasattr(self.bar, "total") and self.bar.total else t)
        if t > self.done:
            self.bar.update(t - self.done)
            self.done = t
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
