"""librdkafka's errors, translated into K2's at the boundary.

A fatal error (the client instance is unusable: an idempotent producer lost its
sequence) and errors that retrying cannot fix (authorization, a record too large, an
invalid setting or topic) become :class:`~k2.errors.TerminalError`; a bad client
setting becomes :class:`~k2.errors.ConfigError`. Everything else — brokers down
(:class:`~k2.errors.ConnectionLost`), timeouts, leader elections, rebalances — is
:class:`~k2.errors.TransientError`: the caller retries with backoff.
"""

from __future__ import annotations

from confluent_kafka import KafkaError, KafkaException

from k2.errors import ConfigError, ConnectionLost, K2Error, TerminalError, TransientError

_TERMINAL = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.CLUSTER_AUTHORIZATION_FAILED,
        KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.INVALID_RECORD,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.INVALID_MSG,
        KafkaError.INVALID_PARTITIONS,
        KafkaError.INVALID_REPLICATION_FACTOR,
        KafkaError.INVALID_CONFIG,
        KafkaError.POLICY_VIOLATION,
        KafkaError.UNSUPPORTED_VERSION,
        KafkaError.UNSUPPORTED_COMPRESSION_TYPE,
        KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError._UNSUPPORTED_FEATURE,
        KafkaError._FATAL,
    }
)
_CONFIG = frozenset({KafkaError._INVALID_ARG})
#: The broker could not be reached or did not answer in time.
_UNREACHABLE = frozenset(
    {
        KafkaError._TRANSPORT,
        KafkaError._ALL_BROKERS_DOWN,
        KafkaError._RESOLVE,
        KafkaError._TIMED_OUT,
        KafkaError._MSG_TIMED_OUT,
    }
)


def kafka_error(err: KafkaError, what: str) -> K2Error:
    """``err`` as the K2 error to raise; the message starts with ``what`` failed."""
    text = f"{what}: {err.name()} ({err.str()})"
    if err.fatal():
        return TerminalError(f"{text} — fatal, the Kafka client must be recreated")
    if err.code() in _CONFIG:
        return ConfigError(f"{text} — check K2_LOG__CLIENT_CONFIG")
    if err.code() in _TERMINAL and not err.retriable():
        return TerminalError(text)
    if err.code() in _UNREACHABLE:
        return ConnectionLost(f"{text} — is the broker up and reachable from here?")
    return TransientError(text)


def from_exception(exc: BaseException, what: str) -> K2Error:
    """A ``KafkaException`` (or a config ``ValueError``/``TypeError`` that
    confluent-kafka raises for a bad setting) as a K2 error."""
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return kafka_error(exc.args[0], what)
    if isinstance(exc, (ValueError, TypeError)):
        return ConfigError(f"{what}: {exc} — check K2_LOG__CLIENT_CONFIG")
    return TransientError(f"{what}: {exc}")
