"""Progress for long work: a tqdm bar on a terminal, periodic log lines (rate, ETA) otherwise."""

from __future__ import annotations

import os
import re
import sys
import time

EVERY_ENV = "FACEPIPE_PROGRESS_EVERY_S"  # log-line cadence; `facepipe run` shortens it for its live display
_LINE = re.compile(r"^(?P<desc>[^|]+?): (?P<n>\d+)(?:/(?P<total>\d+))? (?P<unit>\S+) \| (?P<rate>[0-9.]+) \S+/s"
                   r"(?: \| ETA (?P<eta>\d+)s)?(?P<rest>(?: \| [^|=]+=[^|]*)*)$")


class Progress:
    """`with Progress(total, "packing", unit="img") as p: p.update(n)`.

    On a TTY a tqdm bar; in logs (KFP, CI) one line every `every_s` seconds (default 10, or
    $FACEPIPE_PROGRESS_EVERY_S) with done/total, rate and ETA, plus a final line; `parse_line`
    reads such a line back (the run display shows the running step's last one).
    """

    def __init__(self, total: int | None, desc: str, unit: str = "it", every_s: float | None = None,
                 stream=None, enabled: bool = True):
        if every_s is None:
            every_s = float(os.environ.get(EVERY_ENV) or 10.0)
        self.total, self.desc, self.unit, self.every_s = total, desc, unit, every_s
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.n = 0
        self._bar = None
        self._t0 = self._last = time.monotonic()
        if enabled and hasattr(self.stream, "isatty") and self.stream.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc, unit=unit, file=self.stream, dynamic_ncols=True)

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
            return
        now = time.monotonic()
        if now - self._last >= self.every_s:
            self._last = now
            self._line(now, postfix)

    def _line(self, now: float, postfix: dict) -> None:
        elapsed = max(now - self._t0, 1e-9)
        rate = self.n / elapsed
        parts = [f"{self.desc}: {self.n}" + (f"/{self.total}" if self.total else "") + f" {self.unit}"]
        parts.append(f"{rate:.1f} {self.unit}/s")
        if self.total and rate > 0:
            parts.append(f"ETA {max(self.total - self.n, 0) / rate:.0f}s")
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in postfix.items()]
        print(" | ".join(parts), file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self.enabled:
            self._line(time.monotonic(), {})
            self.enabled = False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def parse_line(text: str) -> dict | None:
    """A log line of `Progress` as {desc, n, total, unit, rate, eta, postfix: {key: text}}; None otherwise."""
    m = _LINE.match(text.strip())
    if m is None:
        return None
    postfix = dict(part.split("=", 1) for part in m["rest"].split(" | ") if "=" in part)
    return {"desc": m["desc"], "n": int(m["n"]), "total": int(m["total"]) if m["total"] else None,
            "unit": m["unit"], "rate": float(m["rate"]), "eta": int(m["eta"]) if m["eta"] else None,
            "postfix": {k.strip(): v.strip() for k, v in postfix.items()}}
