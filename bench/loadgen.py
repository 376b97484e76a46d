"""A mixed load of real SDK calls (recommend / rerank / upsert / interactions) that checks answers.

Used by the load benchmark (bench/load.py) and by the fault and load tests: every call's outcome
is kept (operation, status, latency), every acknowledged write is remembered so a test can prove
nothing acknowledged was lost, and every answer is checked, so "fails only with UNAVAILABLE, never
with a wrong answer" can be asserted rather than assumed.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

from bertrec.client import Client
from bertrec.errors import BertrecError
from bertrec.types import Interaction, Item

DEFAULT_MIX = {"recommend": 0.6, "rerank": 0.2, "upsert": 0.1, "interact": 0.1}


@dataclass(frozen=True)
class Outcome:
    op: str
    status: str  # "OK" or the gRPC status name
    latency_s: float
    at_s: float  # when the call ended, seconds since the load started


@dataclass
class LoadGenerator:
    """`clients` threads, each with its own SDK client, calling for `run(duration_s)` seconds.

    New item ids start at `first_new_id` and are unique across threads; interactions go to
    users named `load-<n>` so a test can read them back from the store one by one.
    """

    target: str | Sequence[str]
    users: Sequence[str]
    item_ids: Sequence[int]
    clients: int = 8
    mix: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    first_new_id: int = 10_000_000
    k: int = 10
    timeout_s: float = 10.0
    max_retries: int = 3
    token: str | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self.wrong: list[str] = []  # answers that failed a check: must stay empty
        self.acked_items: set[int] = set()
        self.attempted_items: set[int] = set()  # sent, acknowledged or not (a lost reply may still have landed)
        self.acked_interactions: list[Interaction] = []
        self._known = set(int(i) for i in self.item_ids)
        self._next_id = self.first_new_id
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.started_at = 0.0
        self.duration_s = 0.0

    # Running
    def start(self) -> None:
        self.started_at = time.monotonic()
        self._threads = [threading.Thread(target=self._worker, args=(n,), daemon=True) for n in range(self.clients)]
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout_s * (self.max_retries + 2))
        self.duration_s = time.monotonic() - self.started_at

    def run(self, duration_s: float) -> None:
        self.start()
        self._stop.wait(duration_s)
        self.stop()

    def now(self) -> float:
        return time.monotonic() - self.started_at

    def _worker(self, n: int) -> None:
        rng = random.Random(self.seed * 1000 + n)
        ops, weights = zip(*self.mix.items())
        client = Client(self.target, token=self.token, timeout_s=self.timeout_s, max_retries=self.max_retries)
        try:
            while not self._stop.is_set():
                op = rng.choices(ops, weights)[0]
                began = time.monotonic()
                try:
                    getattr(self, f"_{op}")(client, rng)
                    status = "OK"
                except BertrecError as exc:
                    status = exc.code.name
                    if status == "UNAVAILABLE":
                        time.sleep(0.05)  # a real caller backs off too
                except Exception as exc:  # a transport error the SDK did not map: count it, never hide it
                    status = f"{type(exc).__name__}"
                with self._lock:
                    self.outcomes.append(Outcome(op, status, time.monotonic() - began, self.now()))
        finally:
            client.close()

    # Operations, each checking its answer
    def _recommend(self, client: Client, rng: random.Random) -> None:
        user = rng.choice(self.users)
        results = list(client.recommend(user, k=self.k))
        ids = [r.item_id for r in results]
        with self._lock:
            unknown = [i for i in ids if i not in self._known and i not in self.attempted_items]
        scores = [r.score for r in results]
        if unknown or len(set(ids)) != len(ids) or len(ids) > self.k or scores != sorted(scores, reverse=True):
            self._wrong(f"recommend({user}) -> {ids} scores {scores}")

    def _rerank(self, client: Client, rng: random.Random) -> None:
        user = rng.choice(self.users)
        candidates = rng.sample(list(self.item_ids), min(20, len(self.item_ids)))
        results = list(client.rerank(user, item_ids=candidates))
        ids = [r.item_id for r in results]
        if sorted(ids) != sorted(candidates):
            self._wrong(f"rerank({user}, {candidates}) -> {ids}")

    def _upsert(self, client: Client, rng: random.Random) -> None:
        with self._lock:
            ids = list(range(self._next_id, self._next_id + rng.randint(1, 4)))
            self._next_id += len(ids)
            self.attempted_items.update(ids)
        items = [Item(id=i, text=f"Load test film {i} ({1950 + i % 70})", metadata={"load": True}) for i in ids]
        summary = client.upsert_items(items)
        if summary.received != len(items):
            self._wrong(f"upsert {ids} -> {summary}")
        with self._lock:
            self.acked_items.update(ids)

    def _interact(self, client: Client, rng: random.Random) -> None:
        with self._lock:
            n = len(self.acked_interactions) + rng.randint(0, 10**9)
        interaction = Interaction(
            user_id=f"load-{n}", item_id=rng.choice(self.item_ids), timestamp=time.time(), weight=1.0
        )
        client.record_interactions([interaction])
        with self._lock:
            self.acked_interactions.append(interaction)

    def _wrong(self, what: str) -> None:
        with self._lock:
            self.wrong.append(what)

    # Reading the results
    def statuses(self, since_s: float = 0.0, until_s: float = float("inf")) -> Counter:
        return Counter(o.status for o in self.outcomes if since_s <= o.at_s <= until_s)

    def last_failure_s(self) -> float | None:
        """When the last non-OK call ended (seconds since start), or None."""
        failed = [o.at_s for o in self.outcomes if o.status != "OK"]
        return max(failed) if failed else None

    def summary(self) -> dict:
        """Throughput, latency percentiles (OK calls) and status counts, overall and per operation."""

        def describe(outcomes: list[Outcome]) -> dict:
            ok = sorted(o.latency_s for o in outcomes if o.status == "OK")
            pick = lambda q: round(1000 * ok[min(len(ok) - 1, int(q * len(ok)))], 2) if ok else None  # noqa: E731
            return {
                "calls": len(outcomes),
                "ok_per_s": round(len(ok) / self.duration_s, 1) if self.duration_s else None,
                "p50_ms": pick(0.50),
                "p99_ms": pick(0.99),
                "statuses": dict(Counter(o.status for o in outcomes)),
            }

        per_op = {op: describe([o for o in self.outcomes if o.op == op]) for op in self.mix}
        return {
            "clients": self.clients,
            "duration_s": round(self.duration_s, 1),
            "all": describe(self.outcomes),
            "by_op": per_op,
            "wrong_answers": len(self.wrong),
            "acked_items": len(self.acked_items),
            "acked_interactions": len(self.acked_interactions),
        }
