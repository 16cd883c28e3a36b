"""`ChannelCoherence`: what every publish/subscribe channel shares, whatever carries it.

The subscriber thread, loss detection (a PING unanswered in time), reconnection with
backoff, publishing with a backlog while the server is away, and `ChannelSettings`, the
options that tune them. The transports are `lazycache.coherence.redis.RedisCoherence`
(Redis pub/sub) and `lazycache.coherence.postgres.PostgresNotifyCoherence` (PostgreSQL
LISTEN/NOTIFY); what travels is in `lazycache.coherence.message`.

One channel object per cache (a second `start()` raises). Caches that share a store
must share the channel name; each publishes the keys of every batch it commits, and
drops the keys the others publish unless it has a pending write of its own for them.

Consistency model
-----------------
Process A runs `cache[k] = v`; process B has a cache over the same store and channel.

* **A itself** reads `v` at once (read-your-writes within one process; every read in
  A sees A's latest write of k, pending or not).
* **The store** has `v` once A's writer commits the batch holding k: within A's
  `write_interval` (default 0.5 s) of the write, or at A's `flush()`/`close()`, or
  later while the store is failing (the batch is retried).
* **B**, if it holds k clean (read earlier), keeps serving its old value until A's
  invalidation reaches it: the commit, plus A's publish (one round trip), plus the
  delivery to B's subscriber thread (sub-millisecond on a LAN). After that, B's
  next read of k reads through and returns `v` (or a newer value). So B may serve a
  value up to `write_interval + publish latency` older than A's write; there is no
  upper bound while A cannot write to the store (A's write is not in the store, so B
  reads the old value from the store too).
* If B holds a **pending write of its own** for k, the invalidation does not touch
  it: B keeps reading its own value, and its write reaches the store after A's (B
  commits later), so both caches end with B's value. Concurrent writers of one key
  in different processes resolve as last committed batch wins, per key.
* If B's subscription breaks (`CLIENT KILL`, the server restarts, a network
  partition detected by a PING unanswered for `ping_timeout` seconds), B drops every
  clean entry, stops caching what it reads (every read goes to the store) and says
  so: `cache.coherent` is False and a WARNING is logged. Once it has subscribed
  again, it drops clean entries once more and caches again. Invalidations published
  while B was away are lost, but B held nothing they could have made stale. Between
  the moment the connection dies and the moment B notices (at once for a closed
  connection; up to `ping_timeout` for a silent partition), B may serve stale values.
* If B's own write of k is being committed at the moment A's invalidation of k
  arrives, B cannot tell whose commit reached the store last: it marks k stale and
  drops it once its own write is acknowledged, so its next read goes to the store
  (tests/test_coherence_redis.py, an invalidation during our own commit).
* If B is in the middle of reading k through from the store when A's invalidation
  arrives, that read may return the value it fetched before A's write, but does not
  cache it: B's next read goes to the store again.
* There is no cross-process linearizability and no ordering between keys: B may see
  A's write of k1 before its write of k2 even if A wrote k2 first. Keys written in
  one batch are invalidated together (one message), but B may read one of them
  between A's commit and the invalidation's arrival.
* If A's publish fails (the channel's connection is down), A keeps the keys and
  publishes them when it can (or, past `max_backlog` keys, tells every cache to drop
  everything clean), so an invalidation is late rather than lost while A lives.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import pickle
import random
import socket
import threading
import time
import uuid
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, TypedDict

from .._checks import check_int, check_seconds, check_seconds_or_none
from .base import Coherence
from .message import ALL_KEYS, KEY_FORMATS, all_message, decode_message, encode_message

if TYPE_CHECKING:
    from typing_extensions import Unpack  # typing's from 3.11 on; only the type checker needs it

__all__ = ["ChannelCoherence", "ChannelOptions", "ChannelSettings"]

log = logging.getLogger("lazycache.coherence")


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class ChannelSettings:
    """The options every `ChannelCoherence` takes, whatever its transport, in one object.

    Pass one as `settings=` to `RedisCoherence` or `PostgresNotifyCoherence` (several
    channels can share one); the same names given as keywords still work, and override
    the values of `settings`. Invalid values raise here: ValueError, or TypeError for a value of
    the wrong type.

    >>> fast = ChannelSettings(ping_interval=0.2, reconnect_max=0.5)
    >>> channel = RedisCoherence(store, "users:invalidate", settings=fast)
    """

    keys: str = "json"
    """How keys travel: "json" (default), or "pickle" for keys JSON cannot name (only on a
    channel nobody untrusted can publish on: unpickling runs code). See
    `lazycache.coherence.message`."""
    ping_interval: float = 1.0
    """Seconds between liveness probes on the subscriber connection."""
    ping_timeout: float | None = None
    """Seconds a probe may stay unanswered before the subscription counts as lost; None
    (default): three ping intervals."""
    reconnect_initial: float = 0.05
    """Seconds before the first attempt to subscribe again after a loss; doubled after each
    failed attempt (with jitter), up to `reconnect_max`."""
    reconnect_max: float = 2.0
    """The longest wait, in seconds, between attempts to subscribe again."""
    max_backlog: int = 100_000
    """Keys held while publishing fails, to be sent once it works again; past this many,
    the channel tells every other cache to drop everything clean instead."""

    def __post_init__(self) -> None:
        if self.keys not in KEY_FORMATS:
            raise ValueError(f"keys must be one of {KEY_FORMATS}, got {self.keys!r}")
        for name in ("ping_interval", "reconnect_initial", "reconnect_max"):
            check_seconds(name, getattr(self, name))
        check_seconds_or_none("ping_timeout", self.ping_timeout)
        check_int("max_backlog", self.max_backlog, minimum=0)

    @property
    def ping_deadline(self) -> float:
        """Seconds after which an unanswered probe means the subscription is lost."""
        if self.ping_timeout is not None:
            return float(self.ping_timeout)
        return 3.0 * self.ping_interval


def _settings_from(settings: ChannelSettings | None, options: Mapping[str, Any]) -> ChannelSettings:
    """`settings` (default: the defaults) with `options`, keyword by keyword, replacing its values."""
    if settings is None:
        return ChannelSettings(**options)
    if not isinstance(settings, ChannelSettings):
        raise TypeError(f"settings must be a ChannelSettings, not {type(settings).__name__}")
    return dataclasses.replace(settings, **options) if options else settings


class ChannelOptions(TypedDict, total=False):
    """`ChannelSettings`' fields as keywords, for the type checker (`**options: Unpack[...]`)."""

    keys: str
    ping_interval: float
    ping_timeout: float | None
    reconnect_initial: float
    reconnect_max: float
    max_backlog: int


# ----------------------------------------------------------------------------- the channel


class ChannelCoherence(Coherence):
    """A `Coherence` over a publish/subscribe channel, with one subscriber thread.

    `settings` (a `ChannelSettings`) and keywords of the same names tune it (see there).

    Subclasses implement `_connect()` (open the subscription and return once the
    server confirmed it), `_receive(timeout)` (messages that arrived, as raw payloads;
    raise on a broken connection), `_ping()` / `_pong_pending()` for liveness,
    `_disconnect()`, `_send(payloads)` to publish, and `_forget_connections()` (in a
    forked child: drop every connection without closing it, they are the parent's).

    The thread calls `on_lost()` once when the subscription breaks (or cannot be made
    at start), reconnects with exponential backoff (`reconnect_initial` doubling to
    `reconnect_max` seconds, with jitter), and calls `on_restored()` once the
    subscription is confirmed again. A connection is declared dead when it raises, or
    when a PING sent every `ping_interval` seconds is unanswered for `ping_timeout`.
    """

    kind = "channel"

    def __init__(
        self, *, settings: ChannelSettings | None = None, **options: Unpack[ChannelOptions]
    ) -> None:
        self.settings = _settings_from(settings, options)
        """This channel's `ChannelSettings`."""
        self.id = uuid.uuid4().hex
        """This channel's publisher id: messages carrying it are not delivered back to it."""
        self._on_keys: Callable[[Sequence[Any]], None] = lambda keys: None
        self._on_lost: Callable[[], None] = lambda: None
        self._on_restored: Callable[[], None] = lambda: None
        self._started = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._state_lock = threading.Lock()  # the backlog and the failing flag; held briefly
        self._send_lock = threading.Lock()  # one send at a time on the publishing connection
        self._backlog: list[Any] = []
        self._backlog_all = False
        self._publish_failing = False
        self._warned_json = False
        self._warned_decode = False
        self.connected = False
        """Whether the subscription is up now."""
        self.losses = 0
        """How many times the subscription was lost (or could not be made at start), counted
        once the cache has handled the loss."""
        self.received = 0
        """Messages from other publishers handled."""
        self.published = 0
        """Messages this channel sent."""

    # ------------------------------------------------------------------ Coherence
    def start(
        self,
        on_keys: Callable[[Sequence[Any]], None],
        on_lost: Callable[[], None],
        on_restored: Callable[[], None],
    ) -> None:
        if self._started:
            raise RuntimeError(
                f"{type(self).__name__} is already started: make one channel object per cache"
            )
        self._started = True
        self._on_keys, self._on_lost, self._on_restored = on_keys, on_lost, on_restored
        # Subscribe before returning, so that a cache is coherent from its first read.
        try:
            self._connect()
        except Exception as exc:
            self._lose(exc)
        else:
            self.connected = True
        self._thread = threading.Thread(
            target=self._run, name=f"lazycache-coherence-{self.kind}", daemon=True
        )
        self._thread.start()

    def publish(self, keys: Sequence[Any]) -> None:
        """Sends the keys now; if the channel is failing, keeps them for the subscriber thread
        to send once it works again (so the writer thread waits for at most one failed attempt
        per outage)."""
        if not keys:
            return
        payloads = self._payloads(list(keys))
        with self._state_lock:
            if self._publish_failing:
                self._hold_locked(keys, payloads)
                return
        try:
            with self._send_lock:
                self._send(payloads)
        except Exception as exc:
            with self._state_lock:
                self._hold_locked(keys, payloads)
                first = not self._publish_failing
                self._publish_failing = True
            with self._send_lock:
                self._close_publisher()
            if first:
                log.warning(
                    "publishing on the %s coherence channel failed (%r); the keys are kept and "
                    "published once it works again",
                    self.kind,
                    exc,
                )
        else:
            self.published += len(payloads)

    def close(self) -> None:
        """Stops the subscriber thread and closes the channel's connections. Idempotent."""
        self._stop.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            self._interrupt()  # wakes the thread if it is waiting for a message
            thread.join(5.0)
        self._disconnect()
        with self._send_lock:
            self._close_publisher()
        with self._state_lock:
            held = len(self._backlog) if not self._backlog_all else "all"
            failing = self._publish_failing
        if failing:
            log.warning(
                "the %s coherence channel closed with invalidations never published (%s keys)",
                self.kind,
                held,
            )

    def after_fork_in_child(self) -> None:
        """In a forked child: stopped, holding none of the parent's connections (closing none).

        The subscriber thread does not exist in the child; its connections, and the
        publishing one, are the parent's sessions. They are forgotten, not closed, so that
        a later `close()` in the child ends nothing of the parent's. The locks are new: a
        parent thread may have held one at the fork.
        """
        self._stop = threading.Event()
        self._stop.set()
        self._thread = None
        self._state_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self.connected = False
        self._forget_connections()

    # ------------------------------------------------------------------ publishing
    def _payloads(self, keys: list[Any]) -> list[str]:
        try:
            message = encode_message(self.id, keys, self.settings.keys)
        except (TypeError, ValueError, pickle.PicklingError) as exc:
            if not self._warned_json:
                self._warned_json = True
                log.error(
                    "%s coherence cannot name these keys (%r); telling the other caches to drop "
                    "everything clean instead. Use keys='pickle' for such keys",
                    self.kind,
                    exc,
                )
            return [all_message(self.id)]
        return self._split(keys, message)

    def _split(self, keys: list[Any], message: str) -> list[str]:
        """The messages carrying the keys, given them all in one (a transport with a payload limit splits it)."""
        return [message]

    def _hold_locked(self, keys: Sequence[Any], payloads: list[str]) -> None:
        if self._backlog_all:
            return
        if (
            any('"all":true' in p for p in payloads)
            or len(self._backlog) + len(keys) > self.settings.max_backlog
        ):
            self._backlog = []
            self._backlog_all = (
                True  # too much to name: the other caches will drop everything clean
            )
        else:
            self._backlog.extend(keys)

    def _retry_publishing(self) -> None:
        """Sends what failed to publish (run by the subscriber thread while its connection is up)."""
        with self._state_lock:
            if not self._publish_failing:
                return
            keys, everything = self._backlog, self._backlog_all
            self._backlog, self._backlog_all = [], False
        payloads = [all_message(self.id)] if everything else (self._payloads(keys) if keys else [])
        try:
            with self._send_lock:
                if payloads:
                    self._send(payloads)
        except Exception:
            with self._send_lock:
                self._close_publisher()
            with self._state_lock:
                if everything:
                    self._backlog_all = True
                    self._backlog = []
                else:
                    self._hold_locked(keys, payloads)
            return
        self.published += len(payloads)
        with self._state_lock:
            if not self._backlog and not self._backlog_all:
                self._publish_failing = False
                done = True
            else:
                done = False  # more arrived meanwhile: sent at the next tick
        if done:
            log.warning(
                "the %s coherence channel publishes again (held invalidations sent)",
                self.kind,
            )

    # ------------------------------------------------------------------ the subscriber thread
    def _lose(self, exc: BaseException) -> None:
        self.connected = False
        log.warning("the %s coherence subscription is down: %r", self.kind, exc)
        try:
            self._on_lost()
        except Exception:
            log.exception("handling the loss of the coherence channel failed")
        # Counted once handled (as `received`), so whoever waits for the count sees its effect:
        # the cache has dropped its clean entries.
        self.losses += 1

    def _run(self) -> None:
        delay = self.settings.reconnect_initial
        while not self._stop.is_set():
            if not self.connected:
                try:
                    self._connect()
                except Exception as exc:
                    log.debug(
                        "reconnecting the %s coherence channel failed: %r",
                        self.kind,
                        exc,
                    )
                    self._disconnect()
                    self._stop.wait(delay * random.uniform(0.5, 1.0))
                    delay = min(self.settings.reconnect_max, delay * 2)
                    continue
                delay = self.settings.reconnect_initial
                self.connected = True
                log.warning("the %s coherence subscription is back", self.kind)
                try:
                    self._on_restored()
                except Exception:
                    log.exception("handling the return of the coherence channel failed")
            try:
                self._listen()
            except Exception as exc:
                self._disconnect()
                if self._stop.is_set():
                    break
                self._lose(exc)
        self.connected = False

    def _listen(self) -> None:
        """Handles messages until the connection breaks (raises) or the channel is closed (returns)."""
        next_ping = time.monotonic() + self.settings.ping_interval
        ping_sent: float | None = None
        while not self._stop.is_set():
            now = time.monotonic()
            wait = max(0.0, min(next_ping - now, 0.25))
            for payload in self._receive(wait):
                self._handle(payload)
            now = time.monotonic()
            if ping_sent is not None and not self._pong_pending():
                ping_sent = None
            if ping_sent is not None and now - ping_sent > self.settings.ping_deadline:
                raise TimeoutError(f"no reply to PING within {self.settings.ping_deadline}s")
            if now >= next_ping:
                if ping_sent is None:
                    self._ping()
                    ping_sent = now
                next_ping = now + self.settings.ping_interval
                if self._publish_failing:
                    self._retry_publishing()

    def _handle(self, payload: Any) -> None:
        try:
            sender, keys = decode_message(payload, self.settings.keys)
        except Exception as exc:
            if not self._warned_decode:
                self._warned_decode = True
                log.warning(
                    "an unreadable message on the %s coherence channel (%r): dropping every clean entry",
                    self.kind,
                    exc,
                )
            sender, keys = None, ALL_KEYS
        if sender == self.id:
            return
        try:
            if keys is ALL_KEYS:
                self._on_lost()
                self._on_restored()
            elif keys:
                self._on_keys(keys)
        except Exception:
            log.exception("applying an invalidation from the coherence channel failed")
        # Counted once applied, so whoever waits for the count sees its effect.
        self.received += 1

    # ------------------------------------------------------------------ what a transport implements
    @abstractmethod
    def _connect(self) -> None:
        """Opens the subscriber connection and subscribes; returns once the server confirmed."""

    @abstractmethod
    def _receive(self, timeout: float) -> list[Any]:
        """The payloads that arrive within timeout seconds (maybe none); raises if the connection broke."""

    @abstractmethod
    def _ping(self) -> None:
        """Sends a liveness probe on the subscriber connection."""

    @abstractmethod
    def _pong_pending(self) -> bool:
        """Whether the last probe is still unanswered."""

    @abstractmethod
    def _disconnect(self) -> None:
        """Closes the subscriber connection (safe to call at any time, from any thread)."""

    @abstractmethod
    def _send(self, payloads: list[str]) -> None:
        """Publishes the payloads (one transaction if the transport has them); raises on failure."""

    def _close_publisher(self) -> None:
        """Closes the publishing connection, if the transport has its own."""

    @abstractmethod
    def _forget_connections(self) -> None:
        """In a forked child: drops every connection reference, closing nothing (they are the parent's)."""

    def _interrupt(self) -> None:
        """Wakes the subscriber thread from its wait (called by close(), from another thread)."""
        _shutdown_socket(self._subscriber_fileno())

    def _subscriber_fileno(self) -> int | None:
        """The subscriber connection's socket descriptor, if connected."""
        return None


def _shutdown_socket(fileno: int | None) -> None:
    """shutdown(2) on a connected socket, by descriptor: its reader wakes up to an end of file."""
    if fileno is None or fileno < 0:
        return
    try:
        sock = socket.socket(fileno=os.dup(fileno))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()
