"""Where market data enters K2: one package per exchange, plus the shared supervisor.

``supervisor`` holds the reconnect/retry machinery (capped jittered backoff, attempt and
rate limiters, ``retry``) that every source and client reuses; it never names an
exchange. ``binance`` holds Binance's facts as data, its WebSocket stream and REST
clients, and pure parsers from wire frames to canonical records.
"""
