"""Rate-limit models for the fake OpenAI Admin API (`FakeOpenAI.limiter`).

The real Admin API limits each endpoint (path template, e.g. `/projects/{project_id}/roles`) on its
own: every project's roles share one allowance. Here a *family* (the names in fake_openai.ROUTES)
is one endpoint.

Every model has the same small interface:

    admit(family, now) -> None | dict[str, str]
        None: serve the request normally. A dict: answer 429 with these headers (maybe empty).
        `now` is a time in real seconds (time.monotonic() in the fake); tests pass it explicitly.
    throttled: Counter[str]      # 429s given, per family
    admitted: Counter[str]       # requests let through, per family
    bound(reads_per_family) -> float
        The wall time, in real seconds, that the limit alone forces on a client making that many
        successful reads per family from a cold start (the limiter's initial state).
    forced(reads_per_family) -> int
        429s the server gives whatever the client does (EveryKth, FirstRequestsRefused); 0 for the others.
    lock                         # admit() takes it; thread safe

A model may also change mid-run: `doubles_at` (real seconds after its first request) doubles its
allowance then, so a client that learned the old limit must find the new one; `bound` counts it.

All times are real seconds, so tests use small windows (0.5 s) and shrink the connector's own waits
with VEZA_OPENAI_TIME_SCALE. Models that send a wait hint take `time_scale` (the connector's
VEZA_OPENAI_TIME_SCALE): the hint is the real wait divided by it, so the connector's scaled wait is
the real one. E.g. a real wait of 25 ms at time_scale 0.01 is sent as `retry-after-ms: 2500`.
"""

from __future__ import annotations

import math
import threading
from collections import Counter
from collections.abc import Iterable, Mapping


class Limiter:
    """Base: counters, lock, and the `admit`/`bound` interface. Never throttles."""

    name = "none"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.throttled: Counter[str] = Counter()
        self.admitted: Counter[str] = Counter()

    def admit(self, family: str, now: float) -> dict[str, str] | None:
        with self.lock:
            headers = self._admit(family, now)
            (self.admitted if headers is None else self.throttled)[family] += 1
            return headers

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        return None

    def bound(self, reads_per_family: Mapping[str, int]) -> float:
        return 0.0

    def forced(self, reads_per_family: Mapping[str, int]) -> int:
        return 0

    @property
    def total_throttled(self) -> int:
        with self.lock:
            return sum(self.throttled.values())


class TokenBucket(Limiter):
    """A token bucket per family: `rate` tokens a second, holding at most `burst`; starts full.

    A request takes one token; without one it gets 429 with a hint of the wait until the next token:
    hint "ms" -> `retry-after-ms` (whole ms, rounded up), "s" -> `retry-after` (whole seconds, rounded
    up, at least 1), None -> no header. `per_endpoint` overrides (rate, burst) for some families.
    A refused request takes no token. `shared=True`: one bucket for the whole organization, every
    family drawing on it (the limit a client cannot see per endpoint). `doubles_at`: the rate doubles
    that many real seconds after the first request.
    """

    name = "token-bucket"

    def __init__(self, rate: float, burst: float, hint: str | None = "ms", *, time_scale: float = 1.0,
                 per_endpoint: Mapping[str, tuple[float, float]] | None = None, shared: bool = False,
                 doubles_at: float | None = None) -> None:
        super().__init__()
        if hint not in ("ms", "s", None):
            raise ValueError(f"hint must be 'ms', 's' or None, not {hint!r}")
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate, self.burst, self.hint, self.time_scale = rate, burst, hint, time_scale
        self.per_endpoint = dict(per_endpoint or {})
        self.shared, self.doubles_at = shared, doubles_at
        self.name = "organization-bucket" if shared else "token-bucket"
        self._buckets: dict[str, tuple[float, float]] = {}  # family -> (tokens, at)
        self._origin: float | None = None

    def limits(self, family: str) -> tuple[float, float]:
        return self.per_endpoint.get(family, (self.rate, self.burst))

    def _refilled(self, since: float, now: float, rate: float) -> float:
        """Tokens refilled between two times, at `rate` until the doubling and twice that after."""
        if self.doubles_at is None or self._origin is None:
            return max(0.0, now - since) * rate
        switch = self._origin + self.doubles_at
        before = max(0.0, min(now, switch) - since)
        after = max(0.0, now - max(since, switch))
        return before * rate + after * 2 * rate

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        if self._origin is None:
            self._origin = now
        key = "" if self.shared else family
        rate, burst = self.limits(family)
        tokens, at = self._buckets.get(key, (burst, now))
        tokens = min(burst, tokens + self._refilled(at, now, rate))
        if tokens >= 1:
            self._buckets[key] = (tokens - 1, now)
            return None
        self._buckets[key] = (tokens, now)
        if self.doubles_at is not None and now >= self._origin + self.doubles_at:
            rate *= 2
        wait = (1 - tokens) / rate / self.time_scale  # in the client's (unscaled) seconds
        if self.hint == "ms":
            return {"retry-after-ms": str(max(1, math.ceil(wait * 1000 - 1e-9)))}
        if self.hint == "s":
            return {"retry-after": str(max(1, math.ceil(wait - 1e-9)))}
        return {}

    def bound(self, reads_per_family: Mapping[str, int]) -> float:
        """max over families of max(0, (R - burst) / rate); shared: (sum of R - burst) / rate.

        With `doubles_at` D: the time by which the tokens refilled (rate until D, twice that after) cover R - burst.
        """
        if self.shared:
            return self._time_for(sum(reads_per_family.values()) - self.burst, self.rate)
        worst = 0.0
        for family, reads in reads_per_family.items():
            rate, burst = self.limits(family)
            worst = max(worst, self._time_for(reads - burst, rate))
        return worst

    def _time_for(self, tokens: float, rate: float) -> float:
        if tokens <= 0:
            return 0.0
        if self.doubles_at is None or tokens <= rate * self.doubles_at:
            return tokens / rate
        return self.doubles_at + (tokens - rate * self.doubles_at) / (2 * rate)


class EveryKth(Limiter):
    """Every k-th request answers 429 with `retry-after-ms` (sent as given, not scaled).

    Counted over all families together by default (request number k, 2k, ... of the whole run,
    429s included in the count); `per_endpoint=True` keeps one count per family.
    `retry_after_ms=None` sends no header.
    """

    name = "every-kth"

    def __init__(self, k: int, retry_after_ms: int | None = 20, *, per_endpoint: bool = False) -> None:
        super().__init__()
        if k < 1:
            raise ValueError("k must be >= 1")
        self.k, self.retry_after_ms, self.per_endpoint = k, retry_after_ms, per_endpoint
        self._seen: Counter[str] = Counter()

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        key = family if self.per_endpoint else ""
        self._seen[key] += 1
        if self._seen[key] % self.k:
            return None
        return {} if self.retry_after_ms is None else {"retry-after-ms": str(self.retry_after_ms)}

    def bound(self, reads_per_family: Mapping[str, int]) -> float:
        return 0.0  # no wait is forced; compare with a clean run instead

    def forced(self, reads_per_family: Mapping[str, int]) -> int:
        """One 429 per k - 1 requests let through (counted over all families, or per family with per_endpoint)."""
        if self.k == 1:
            return 0  # every request refused: nothing is let through
        counts = reads_per_family.values() if self.per_endpoint else [sum(reads_per_family.values())]
        return sum(reads // (self.k - 1) for reads in counts)


class FixedWindows(Limiter):
    """n requests per window of window_s seconds per family; 429 with no header beyond that.

    Default (aligned=False), as measured on the real API: a family's window starts at its first
    request after the previous window ended (sliding-from-first); 429s do not count and do not
    extend the window. aligned=True: windows are clock-aligned, [k*W, (k+1)*W) of `now` measured
    from `origin`. `doubles_at`: windows that start that many real seconds after the first request allow
    twice as many.
    """

    name = "fixed-windows"

    def __init__(self, default: tuple[int, float] = (60, 60.0),
                 per_endpoint: Mapping[str, tuple[int, float]] | None = None, *, aligned: bool = False,
                 origin: float = 0.0, doubles_at: float | None = None) -> None:
        super().__init__()
        self.default, self.per_endpoint = default, dict(per_endpoint or {})
        self.aligned, self.origin, self.doubles_at = aligned, origin, doubles_at
        self._windows: dict[str, tuple[float, int]] = {}  # family -> (window start, requests admitted in it)
        self._first: float | None = None

    def limits(self, family: str) -> tuple[int, float]:
        return self.per_endpoint.get(family, self.default)

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        if self._first is None:
            self._first = now
        n, window = self.limits(family)
        if self.doubles_at is not None and now >= self._first + self.doubles_at:
            n *= 2
        if self.aligned:
            start = self.origin + math.floor((now - self.origin) / window) * window
            current, count = self._windows.get(family, (start, 0))
            if current != start:
                count = 0
        else:
            start, count = self._windows.get(family, (now, 0))
            if now >= start + window:
                start, count = now, 0
        if count >= n:
            self._windows[family] = (start, count)
            return {}
        self._windows[family] = (start, count + 1)
        return None

    def bound(self, reads_per_family: Mapping[str, int]) -> float:
        """max over families of (ceil(R/n) - 1) * W; aligned windows: (ceil(R/n) - 2) * W (first may be partial)."""
        worst = 0.0
        for family, reads in reads_per_family.items():
            if reads <= 0:
                continue
            n, window = self.limits(family)
            if self.doubles_at is not None and not self.aligned:
                worst = max(worst, self._doubling_bound(reads, n, window))
                continue
            windows = math.ceil(reads / n)
            worst = max(worst, max(0, windows - (2 if self.aligned else 1)) * window)
        return worst

    def windows(self) -> dict[str, tuple[float, int]]:
        """A copy of the windows begun: family -> (start, requests admitted in it); for `bound_from` later."""
        with self.lock:
            return dict(self._windows)

    def bound_from(self, reads_per_family: Mapping[str, int], now: float,
                   windows: Mapping[str, tuple[float, int]] | None = None) -> float:
        """`bound` for a client starting at `now` against windows already begun (an earlier client spent them).

        Per family: what is left of its current window goes at once; the rest waits for the window's end,
        then takes a window each. `windows`: the state at `now` (from `windows()`); None: the state now.
        Sliding windows without doubling only.
        """
        if self.aligned or self.doubles_at is not None:
            raise NotImplementedError("bound_from: sliding windows without doubling only")
        begun = self.windows() if windows is None else windows
        worst = 0.0
        for family, reads in reads_per_family.items():
            n, window = self.limits(family)
            start, count = begun.get(family, (-math.inf, 0))
            left, refill = (n - count, start + window - now) if now < start + window else (n, window)
            if reads > left:
                worst = max(worst, refill + (math.ceil((reads - left) / n) - 1) * window)
        return worst

    def _doubling_bound(self, reads: int, n: int, window: float) -> float:
        """Windows back to back from 0; one starting at or after `doubles_at` allows 2n."""
        start = 0.0
        while True:
            reads -= 2 * n if start >= self.doubles_at else n
            if reads <= 0:
                return start
            start += window


class FirstRequestsRefused(Limiter):
    """The first request of each given family answers 429 with no header; nothing else is limited.

    A limit that was transient (one-off 429s at the start of a run): they cost no wait, and the server
    gives them whatever the client does (`forced`).
    """

    name = "first-requests-refused"

    def __init__(self, families: Iterable[str]) -> None:
        super().__init__()
        self.families = frozenset(families)
        self._refused: set[str] = set()

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        if family not in self.families or family in self._refused:
            return None
        self._refused.add(family)
        return {}

    def forced(self, reads_per_family: Mapping[str, int]) -> int:
        """One per listed family the client asked at all: read, or refused and not yet asked again."""
        with self.lock:
            asked = set(self._refused)
        return len(asked | {family for family, reads in reads_per_family.items() if family in self.families and reads})


class AlwaysThrottled(Limiter):
    """The given families answer 429 forever, with no header; the others are not limited."""

    name = "always-throttled"

    def __init__(self, families: Iterable[str]) -> None:
        super().__init__()
        self.families = frozenset(families)

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        return {} if family in self.families else None

    def bound(self, reads_per_family: Mapping[str, int]) -> float:
        return math.inf if any(reads > 0 for f, reads in reads_per_family.items() if f in self.families) else 0.0


class Combined(Limiter):
    """Several models at once (an organization bucket and per-endpoint windows): a request goes only when
    every one lets it; the first that refuses answers, and the ones after it are not asked (nor charged)."""

    def __init__(self, *models: Limiter) -> None:
        super().__init__()
        self.models = models
        self.name = "+".join(model.name for model in models)

    def _admit(self, family: str, now: float) -> dict[str, str] | None:
        for model in self.models:
            headers = model._admit(family, now)
            if headers is not None:
                return headers
        return None

    def bound(self, reads_per_family: Mapping[str, int]) -> float:
        return max(model.bound(reads_per_family) for model in self.models)
