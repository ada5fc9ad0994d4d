"""K2's exception tree.

Every error K2 raises derives from :class:`K2Error`, split by what the caller should
do about it:

- :class:`TransientError` — retrying later may succeed (a dropped connection, a rate
  limit, an exchange under maintenance). Supervisors retry these with backoff.
- :class:`TerminalError` — retrying the same thing will fail the same way (a bad
  setting, an unknown symbol, a malformed archive). Stop, or dead-letter the input.

Third-party exceptions are translated into these where they enter K2, so callers
never need to import ``websockets`` or ``httpx`` to handle an error.
"""

from __future__ import annotations


class K2Error(Exception):
    """Root of every error K2 raises."""


class TransientError(K2Error):
    """A failure that may go away on retry."""


class TerminalError(K2Error):
    """A failure that retrying will not fix."""


class ConfigError(TerminalError):
    """An invalid setting; the message names the variable or file at fault."""


class ConnectionLost(TransientError):
    """A network connection closed or could not be opened."""


class RateLimited(TransientError):
    """The remote side asked us to slow down (HTTP 429/418, or a WS control limit).

    ``retry_after`` is the number of seconds the server asked us to wait, if it said.
    ``banned`` is true for Binance's HTTP 418 (an IP ban for ignoring 429s).
    """

    def __init__(self, message: str, retry_after: float | None = None, banned: bool = False):
        super().__init__(message)
        self.retry_after = retry_after
        self.banned = banned


class ExchangeError(TerminalError):
    """The exchange rejected a request (bad symbol, bad parameter).

    ``code`` is the exchange's own error code (Binance: e.g. -1121 Invalid symbol).
    """

    def __init__(self, message: str, code: int | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class UnknownSymbol(ExchangeError):
    """The exchange does not list this symbol."""
