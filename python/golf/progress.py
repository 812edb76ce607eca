"""Progress for long work: a one-line bar on a terminal, `key=value` lines every few seconds otherwise."""

from __future__ import annotations

import sys
import time


def format_seconds(seconds: float) -> str:
    seconds = max(0, int(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class Progress:
    """Counts `unit`s of work toward `total` (None if unknown) and reports rate and ETA."""

    def __init__(self, desc: str, total: int | None = None, unit: str = "it", stream=None, every_s: float = 5.0):
        self.desc, self.total, self.unit = desc, total, unit
        self.stream = stream if stream is not None else sys.stderr
        self.every_s = every_s
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.done = 0
        self.fields: dict = {}
        self.start = self._last = time.perf_counter()

    def _line(self) -> str:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.desc}", f"{self.unit}={self.done}" + (f"/{self.total}" if self.total else "")]
        parts.append(f"{self.unit}_per_s={rate:,.0f}")
        parts.append(f"elapsed={format_seconds(elapsed)}")
        if self.total and rate > 0:
            parts.append(f"eta={format_seconds((self.total - self.done) / rate)}")
        parts += [f"{k}={v}" for k, v in self.fields.items()]
        return " ".join(parts)

    def update(self, n: int = 1, **fields) -> None:
        self.done += n
        self.fields.update(fields)
        now = time.perf_counter()
        if self.tty:
            if now - self._last >= 0.1:
                self._last = now
                self.stream.write("\r" + self._line() + "\x1b[K")
                self.stream.flush()
        elif now - self._last >= self.every_s:
            self._last = now
            print(self._line(), file=self.stream, flush=True)

    def close(self) -> None:
        prefix, clear = ("\r", "\x1b[K") if self.tty else ("", "")
        print(prefix + self._line() + " done" + clear, file=self.stream, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
