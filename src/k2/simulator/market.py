"""A synthetic spot market: trades and best bid/ask updates for a few symbols.

The model is deliberately simple but has the features a pipeline must cope with:

- Activity comes in regimes (calm, normal, burst; a seeded Markov chain per symbol)
  scaled so the long-run mean equals the configured rate; event counts per generation
  step are Poisson.
- The best bid random-walks on the tick grid, nudged in the direction of recent
  aggression; the ask sits ``spread_ticks`` above it.
- Trades execute at the current best bid (seller aggressor, ``m`` true) or best ask
  (buyer aggressor); the aggressor side persists in runs but is 50/50 in the long run.
- Sizes are Pareto-tailed multiples of the step size.
- Trade ids per symbol are consecutive; bookTicker update ids only increase.

Payloads follow Binance's current spot formats exactly, prices and quantities with 8
decimals. Generation happens in batches: :meth:`SyntheticMarket.advance` produces every
event due up to a given time and appends them to the tape in one call.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable

from k2.ops.log import get_logger
from k2.simulator.clock import Clock
from k2.simulator.config import UNITS_PER_ONE, SimulatorConfig, SymbolSpec, to_units
from k2.simulator.stats import SimulatorStats
from k2.simulator.tape import Tape, TradeHistory

__all__ = ["SyntheticMarket", "format_units", "run_synthetic"]

_log = get_logger(__name__)

# Regimes: (rate multiplier before normalisation, mean dwell seconds, next regimes).
_REGIMES: tuple[tuple[float, float, tuple[int, ...]], ...] = (
    (0.4, 8.0, (1,)),  # calm -> normal
    (1.0, 10.0, (0, 2)),  # normal -> calm or burst
    (4.0, 1.5, (1,)),  # burst -> normal
)
_SIDE_PERSISTENCE = 0.72  # chance the next aggressor is on the same side as the last
_MOVE_SHARE = 0.3  # share of quote updates that move the price by one tick
_MOVE_BIAS = 0.15  # extra chance a move follows the last aggressor's direction
_PARETO_ALPHA = 1.5
_PARETO_MEDIAN = 2 ** (1 / _PARETO_ALPHA)
_MAX_STEP_US = 1_000_000  # never generate more than 1 s of market in one call


def format_units(units: int) -> str:
    """An integer count of 1e-8 units as Binance prints it: ``12.34000000``."""
    whole, frac = divmod(units, UNITS_PER_ONE)
    return f"{whole}.{frac:08d}"


def _regime_multipliers() -> tuple[float, ...]:
    # Long-run share of time in each regime = visit frequency x mean dwell; visits of
    # the embedded chain are 1/4, 1/2, 1/4 for calm, normal, burst.
    visits = (0.25, 0.5, 0.25)
    weights = [v * dwell for v, (_, dwell, _) in zip(visits, _REGIMES, strict=True)]
    total = sum(weights)
    mean = sum(w / total * m for w, (m, _, _) in zip(weights, _REGIMES, strict=True))
    return tuple(m / mean for m, _, _ in _REGIMES)


_MULTIPLIERS = _regime_multipliers()


def _poisson(rng: random.Random, lam: float) -> int:
    if lam <= 0:
        return 0
    if lam > 30:
        return max(0, round(rng.gauss(lam, math.sqrt(lam))))
    threshold = math.exp(-lam)
    k, p = 0, rng.random()
    while p > threshold:
        k += 1
        p *= rng.random()
    return k


class _Book:
    """Mutable state of one synthetic symbol."""

    __slots__ = (
        "ask_qty",
        "bid",
        "bid_qty",
        "book_stream",
        "cache_price",
        "cache_qty",
        "event_rate",
        "last_sell",
        "next_trade_id",
        "next_update_id",
        "qty_scale",
        "regime",
        "spec",
        "spread",
        "step",
        "symbol",
        "tick",
        "trade_stream",
    )

    def __init__(self, spec: SymbolSpec, event_rate: float, rng: random.Random) -> None:
        self.spec = spec
        self.symbol = spec.symbol
        lower = spec.symbol.lower()
        self.trade_stream = f"{lower}@trade"
        self.book_stream = f"{lower}@bookTicker"
        self.tick = to_units(spec.tick_size, "tick_size")
        self.step = to_units(spec.step_size, "step_size")
        self.bid = to_units(spec.start_price, "start_price")
        self.spread = spec.spread_ticks * self.tick
        typical_steps = to_units(spec.typical_qty, "typical_qty") // self.step
        self.qty_scale = typical_steps / _PARETO_MEDIAN
        self.next_trade_id = spec.first_trade_id
        self.next_update_id = spec.first_update_id
        self.event_rate = event_rate
        self.regime = 1
        self.last_sell = rng.random() < 0.5
        self.bid_qty = self.step * 10
        self.ask_qty = self.step * 10
        self.cache_price: dict[int, str] = {}
        self.cache_qty: dict[int, str] = {}

    def price_text(self, units: int) -> str:
        text = self.cache_price.get(units)
        if text is None:
            if len(self.cache_price) > 4096:
                self.cache_price.clear()
            text = self.cache_price[units] = format_units(units)
        return text

    def qty_text(self, units: int) -> str:
        text = self.cache_qty.get(units)
        if text is None:
            if len(self.cache_qty) > 4096:
                self.cache_qty.clear()
            text = self.cache_qty[units] = format_units(units)
        return text


#: 2026-01-01T00:00:00Z: where ``continue_ids`` starts counting.
CONTINUE_IDS_EPOCH_US = 1_767_225_600_000_000


class SyntheticMarket:
    """Generates the synthetic market onto a tape and a trade history.

    ``start_us`` (UTC µs) is where the market's time begins; nothing is generated for
    the time before it.
    """

    def __init__(
        self,
        config: SimulatorConfig,
        tape: Tape,
        trades: TradeHistory,
        stats: SimulatorStats,
        start_us: int,
    ) -> None:
        self._rng = random.Random(config.seed)
        self._tape = tape
        self._trades = trades
        self._stats = stats
        self._trade_share = 1.0 / (1.0 + config.quote_ratio)
        self._regimes = config.regime_switching
        total_trade_rate = sum(s.trade_rate for s in config.symbols)
        books = []
        for spec in config.symbols:
            if config.rate is not None:
                rate = config.rate * spec.trade_rate / total_trade_rate
            else:
                rate = spec.trade_rate * (1.0 + config.quote_ratio)
            book = _Book(spec, rate, self._rng)
            if config.continue_ids:
                # Ids grow with the wall clock (at most 10,000 per second per symbol
                # between runs), so a restarted simulator continues above any id an
                # earlier run printed, as a real exchange does across K2's restarts.
                book.next_trade_id += max(0, start_us - CONTINUE_IDS_EPOCH_US) // 100
                book.next_update_id += max(0, start_us - CONTINUE_IDS_EPOCH_US) // 100
            books.append(book)
        self._books = books
        self._last_us = start_us

    @property
    def symbols(self) -> tuple[SymbolSpec, ...]:
        """The symbols this market trades."""
        return tuple(b.spec for b in self._books)

    def advance(self, now_us: int) -> int:
        """Generate every event due after the previous call and up to ``now_us``.

        Returns the number of events appended to the tape. Time that went backwards
        generates nothing; a gap longer than one second is shortened to one second
        (the market does not replay a suspended process's lost time in one burst).
        """
        elapsed = now_us - self._last_us
        if elapsed <= 0:
            return 0
        if elapsed > _MAX_STEP_US:
            self._last_us = now_us - _MAX_STEP_US
            elapsed = _MAX_STEP_US
        start = self._last_us
        self._last_us = now_us
        rng = self._rng
        seconds = elapsed / 1_000_000
        if self._regimes:
            self._switch_regimes(seconds)
        cumulative: list[float] = []
        total = 0.0
        for book in self._books:
            total += book.event_rate * _MULTIPLIERS[book.regime] * seconds
            cumulative.append(total)
        count = _poisson(rng, total)
        if count == 0:
            return 0
        picks = rng.choices(self._books, cum_weights=cumulative, k=count)
        streams: list[str] = []
        payloads: list[bytes] = []
        event_us: list[int] = []
        trade_us: list[int] = []
        step = elapsed / count
        for i, book in enumerate(picks):
            at = start + int((i + rng.random()) * step)
            if rng.random() < self._trade_share:
                self._trade(book, at, streams, payloads, event_us, trade_us)
            else:
                self._quote(book, streams, payloads)
                event_us.append(-1)
                trade_us.append(-1)
        self._tape.append(streams, payloads, event_us, trade_us)
        self._stats.events_on_tape += count
        return count

    def _switch_regimes(self, seconds: float) -> None:
        rng = self._rng
        for book in self._books:
            _, dwell, targets = _REGIMES[book.regime]
            if rng.random() < 1.0 - math.exp(-seconds / dwell):
                book.regime = targets[0] if len(targets) == 1 else rng.choice(targets)

    def _size(self, book: _Book) -> int:
        steps = int(book.qty_scale * self._rng.paretovariate(_PARETO_ALPHA))
        return max(1, min(steps, int(book.qty_scale * 5000) + 1)) * book.step

    def _trade(
        self,
        book: _Book,
        at_us: int,
        streams: list[str],
        payloads: list[bytes],
        event_us: list[int],
        trade_us: list[int],
    ) -> None:
        rng = self._rng.random
        sell = book.last_sell if rng() < _SIDE_PERSISTENCE else not book.last_sell
        book.last_sell = sell
        price = book.bid if sell else book.bid + book.spread
        qty = self._size(book)
        trade_id = book.next_trade_id
        book.next_trade_id = trade_id + 1
        emitted_us = at_us + int(rng() * 1500)  # matching-engine to gateway latency
        payloads.append(
            f'{{"e":"trade","E":{emitted_us // 1000},"s":"{book.symbol}","t":{trade_id},'
            f'"p":"{book.price_text(price)}","q":"{book.qty_text(qty)}","T":{at_us // 1000},'
            f'"m":{"true" if sell else "false"},"M":true}}'.encode()
        )
        streams.append(book.trade_stream)
        event_us.append(emitted_us)
        trade_us.append(at_us)
        self._trades.add(book.symbol, trade_id, price, qty, at_us, sell)

    def _quote(self, book: _Book, streams: list[str], payloads: list[bytes]) -> None:
        rng = self._rng.random
        if rng() < _MOVE_SHARE:
            up_chance = 0.5 + (-_MOVE_BIAS if book.last_sell else _MOVE_BIAS)
            if rng() < up_chance:
                book.bid += book.tick
            elif book.bid > book.tick:
                book.bid -= book.tick
            book.bid_qty = self._size(book)
            book.ask_qty = self._size(book)
        elif rng() < 0.5:
            book.bid_qty = self._size(book)
        else:
            book.ask_qty = self._size(book)
        update_id = book.next_update_id
        book.next_update_id = update_id + 1 + int(rng() * 3)
        payloads.append(
            f'{{"u":{update_id},"s":"{book.symbol}","b":"{book.price_text(book.bid)}",'
            f'"B":"{book.qty_text(book.bid_qty)}","a":"{book.price_text(book.bid + book.spread)}",'
            f'"A":"{book.qty_text(book.ask_qty)}"}}'.encode()
        )
        streams.append(book.book_stream)


async def run_synthetic(
    market: SyntheticMarket,
    clock: Clock,
    interval_s: float,
    on_batch: Callable[[int], None] | None = None,
) -> None:
    """Advance ``market`` to ``clock.time_us()`` every ``interval_s`` until cancelled."""
    _log.info("synthetic market started", symbols=[s.symbol for s in market.symbols])
    while True:
        await clock.sleep(interval_s)
        produced = market.advance(clock.time_us())
        if on_batch is not None and produced:
            on_batch(produced)
