"""The supervisor: owns the broker connection and the shard processes.

It receives messages, routes each to the shard of its repository, hands
every shard one message at a time, and acknowledges a message only when its
shard reports the effects committed. It restarts shards that die, gives up
on a message that kills its shard too often, reconnects to the broker with
backoff, and drains on SIGTERM or SIGINT.
"""

import logging
import multiprocessing
import signal
import socket
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection as Pipe
from multiprocessing.connection import wait

from django.db import close_old_connections, connections
from kombu import Consumer
from kombu.message import Message

from shardworker import broker, deadletters, metrics, undecodable
from shardworker.deliveries import SOURCES, Delivery, printable, route_to_shard
from shardworker.results import DEAD_LETTERED, OUTCOMES, PROCESSED, REQUEUED, Result
from shardworker.shard import run_shard
from shardworker.status import StatusServer

logger = logging.getLogger(__name__)

EXIT_OK = 0
RESTART_BACKOFF_MAX = 30.0
RECONNECT_BACKOFF_MAX = 60.0
# A shard that lived less than this when it died was crash-looping.
HEALTHY_UPTIME = 10.0
MAX_READS_PER_WAKEUP = 64
BACKLOG_INTERVAL = 15.0
# /healthz fails when the main loop has not turned for this long.
LOOP_STALL = 30.0


def keep_dead_letter(delivery: Delivery, reason: str, attempts: int,
                     repository: str = "") -> None:
    """The supervisor's rare database write. Its connection may have broken
    since the last one (the database restarted): drop it so that this write
    connects afresh, and drop it again when the write fails."""
    close_old_connections()
    try:
        deadletters.keep(delivery, reason, attempts, repository)
    except Exception:
        connections.close_all()
        raise


@dataclass
class Assignment:
    """A received message on its way through a shard."""

    delivery: Delivery
    message: Message
    generation: int
    crashes: int = 0
    started: float = 0.0


@dataclass
class ShardProcess:
    """The supervisor's view of one shard process."""

    index: int
    process: multiprocessing.Process | None = None
    pipe: Pipe | None = None
    ready: bool = False
    current: Assignment | None = None
    pending: deque = field(default_factory=deque)
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0
    timed_out: bool = False

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.is_alive()


class Supervisor:
    """One per `consume-pulse`: a loop you can read top to bottom in `run`."""

    def __init__(self, shards: int, prefetch: int, *, drain_seconds: float,
                 max_crashes: int, message_timeout: float,
                 status_address: tuple[str, int] | None = None):
        self.shards = [ShardProcess(index) for index in range(shards)]
        self.prefetch = prefetch
        self.drain_seconds = drain_seconds
        self.max_crashes = max_crashes
        self.message_timeout = message_timeout
        self.context = multiprocessing.get_context("spawn")
        self.connection = None
        self.consumer = None
        self.generation = 0
        self.reconnect_at = 0.0
        self.connect_failures = 0
        self.crashes: dict[str, int] = {}
        self.stop_signal: int | None = None
        self.hurry = False
        self.metrics = metrics.get()
        self.in_flight_shown: list[int | None] = [None] * shards
        self.backlog_at = 0.0
        self.loop_turned = time.monotonic()
        self.status = None
        if status_address is not None:
            self.status = StatusServer(*status_address, health=self.health,
                                       readiness=self.readiness)

    def run(self) -> int:
        self.install_signal_handlers()
        logger.info("supervisor starting %d shards", len(self.shards))
        self.metrics["build"].labels(metrics.VERSION).set(1)
        self.metrics["connected"].set(0)
        for source in SOURCES.values():
            # Series exist from the start, so rates and alerts see zeros.
            for name in ("received", "redeliveries", "dead_letters", "processing"):
                self.metrics[name].labels(source)
            for outcome in OUTCOMES:
                self.metrics["processed"].labels(source, outcome)
        for reason in ("exit", "signal", "timeout"):
            self.metrics["restarts"].labels(reason)
        for operation in ("cloned", "pulled", "repaired"):
            self.metrics["clone_update"].labels(operation)
        for repair in ("break-locks", "recover", "reclone"):
            self.metrics["clone_repairs"].labels(repair)
        if self.status is not None:
            self.status.start()
        for shard in self.shards:
            self.spawn_shard(shard)
        try:
            while self.stop_signal is None:
                self.loop_turned = time.monotonic()
                if self.consumer is None and time.monotonic() >= self.reconnect_at:
                    self.connect()
                self.wait_for_events(timeout=1.0)
                self.reap_shards()
                self.dispatch()
                self.measure()
        except BaseException:
            # A bug in the loop must end the process, so that its service
            # manager restarts it: shards waiting on their pipes would keep
            # it alive, consuming nothing.
            logger.exception("supervisor failed; stopping its shards")
            for shard in self.shards:
                if shard.process is not None:
                    shard.process.kill()
            raise
        self.drain()
        if self.status is not None:
            self.status.stop()
        return EXIT_OK

    # What the status endpoints and the gauges say.

    def health(self) -> tuple[bool, str]:
        stalled = time.monotonic() - self.loop_turned
        if stalled > LOOP_STALL:
            return False, f"supervisor loop stalled for {stalled:.0f} s"
        dead = [str(shard.index) for shard in self.shards if not shard.alive]
        if dead:
            return False, f"shards not running: {', '.join(dead)}"
        return True, f"supervisor and {len(self.shards)} shards alive"

    def readiness(self) -> tuple[bool, str]:
        if self.consumer is None:
            return False, "not connected to the broker"
        return True, "consuming"

    def measure(self) -> None:
        """Update gauges that follow state: in flight per shard, backlog."""
        for shard in self.shards:
            count = len(shard.pending) + (1 if shard.current else 0)
            if self.in_flight_shown[shard.index] != count:
                self.metrics["in_flight"].labels(str(shard.index)).set(count)
                self.in_flight_shown[shard.index] = count
        now = time.monotonic()
        if self.consumer is None or now < self.backlog_at:
            return
        self.backlog_at = now + BACKLOG_INTERVAL
        try:
            for queue in self.consumer.queues:
                _, waiting, _ = self.consumer.channel.queue_declare(queue.name, passive=True)
                self.metrics["backlog"].labels(queue.name).set(waiting)
        except self.recoverable_errors() as error:
            self.disconnected(error)

    # Signals: the handlers only record; the main loop acts.

    def install_signal_handlers(self) -> None:
        # The wakeup pipe ends the wait in the main loop as soon as a signal
        # arrives, instead of at the wait's timeout.
        self.wakeup_reader, wakeup_writer = socket.socketpair()
        self.wakeup_reader.setblocking(False)
        wakeup_writer.setblocking(False)
        self.wakeup_writer = wakeup_writer
        signal.set_wakeup_fd(wakeup_writer.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.handle_stop)
        signal.signal(signal.SIGINT, self.handle_stop)

    def handle_stop(self, signum: int, frame) -> None:
        if self.stop_signal is not None:
            # A second signal: stop waiting for in-flight work.
            self.hurry = True
        self.stop_signal = signum

    # Shards.

    def spawn_shard(self, shard: ShardProcess) -> None:
        parent_end, child_end = self.context.Pipe(duplex=True)
        process = self.context.Process(
            target=run_shard, args=(shard.index, child_end), name=f"shard-{shard.index}",
            daemon=False,
        )
        process.start()
        child_end.close()
        shard.process, shard.pipe, shard.ready = process, parent_end, False
        shard.started_at = time.monotonic()
        logger.info("shard=%d started as pid %d", shard.index, process.pid)

    def reap_shards(self) -> None:
        """Notice dead shards, settle their message, and restart them."""
        now = time.monotonic()
        for shard in self.shards:
            if shard.process is None:
                if now >= shard.restart_at and self.stop_signal is None:
                    self.spawn_shard(shard)
                continue
            if shard.current and now - shard.current.started > self.message_timeout:
                logger.error("shard=%d repo=%s msg=%s busy for over %.0f s; killing it",
                             shard.index, shard.current.delivery.repository[:100],
                             shard.current.delivery.short_id, self.message_timeout)
                shard.timed_out = True
                shard.process.kill()
                shard.process.join(5)
            if shard.process.is_alive():
                continue
            self.bury_shard(shard, now)

    def bury_shard(self, shard: ShardProcess, now: float) -> None:
        code = shard.process.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else \
            f"exited with code {code}"
        logger.error("shard=%d (pid %d) %s", shard.index, shard.process.pid, how)
        reason = "timeout" if shard.timed_out else "signal" if code and code < 0 else "exit"
        self.metrics["restarts"].labels(reason).inc()
        shard.timed_out = False
        shard.pipe.close()
        shard.process, shard.pipe, shard.ready = None, None, False
        if now - shard.started_at < HEALTHY_UPTIME:
            shard.quick_deaths += 1
        else:
            shard.quick_deaths = 0
        delay = min(2 ** shard.quick_deaths - 1, RESTART_BACKOFF_MAX)
        shard.restart_at = now + delay
        if delay:
            logger.warning("shard=%d restarting in %.0f s", shard.index, delay)
        if shard.current is not None:
            assignment, shard.current = shard.current, None
            self.settle_crash(shard, assignment)

    def settle_crash(self, shard: ShardProcess, assignment: Assignment) -> None:
        """The message a shard died on: try again, or keep it as a dead letter."""
        if assignment.generation != self.generation:
            return
        delivery = assignment.delivery
        crashes = self.crashes.get(delivery.message_id, 0) + 1
        self.crashes[delivery.message_id] = crashes
        if crashes < self.max_crashes:
            logger.warning("shard=%d repo=%s msg=%s shard died during the message (%d of %d); "
                           "trying again", shard.index, delivery.repository[:100],
                           delivery.short_id, crashes, self.max_crashes)
            assignment.crashes = crashes
            shard.pending.appendleft(assignment)
            return
        reason = f"the shard processing it died {crashes} times"
        try:
            keep_dead_letter(delivery, reason, crashes, delivery.repository)
        except Exception:
            logger.exception("msg=%s cannot store dead letter; returning it to the queue",
                             delivery.short_id)
            self.settle(assignment, Result(REQUEUED, delivery.repository, reason))
            return
        self.crashes.pop(delivery.message_id, None)
        logger.warning("shard=%d repo=%s msg=%s dead_lettered in %.2f s: %s", shard.index,
                       delivery.repository[:100], delivery.short_id,
                       time.monotonic() - assignment.started, reason)
        self.settle(assignment, Result(DEAD_LETTERED, delivery.repository, reason))

    def dispatch(self) -> None:
        """Hand each idle, ready shard its next message."""
        for shard in self.shards:
            if not shard.ready or shard.current is not None or not shard.pending:
                continue
            assignment = shard.pending.popleft()
            if assignment.generation != self.generation:
                continue
            assignment.started = time.monotonic()
            shard.current = assignment
            try:
                shard.pipe.send(("process", assignment.delivery, assignment.crashes))
            except (BrokenPipeError, OSError):
                pass  # reap_shards sees the death and settles the message

    def wait_for_events(self, timeout: float) -> None:
        """Sleep until a shard reports or dies, the broker sends, or a signal
        arrives; then handle what came."""
        pipes = {shard.pipe: shard for shard in self.shards if shard.pipe is not None}
        sentinels = [shard.process.sentinel for shard in self.shards if shard.process]
        sources = [*pipes, *sentinels, self.wakeup_reader]
        broker_socket = self.broker_socket()
        if broker_socket is not None:
            sources.append(broker_socket)
        elif self.consumer is not None:
            timeout = 0  # bytes may wait inside TLS; read them without sleeping
        ready = wait(sources, timeout)
        for source in ready:
            if source in pipes:
                self.read_report(pipes[source])
            elif source is self.wakeup_reader:
                try:
                    self.wakeup_reader.recv(512)
                except BlockingIOError:
                    pass
        self.pump_broker(broker_socket in ready if broker_socket is not None else False)

    def broker_socket(self) -> socket.socket | None:
        """The connection's socket, when waiting on it can be trusted: a TLS
        socket holding decrypted bytes would look idle, so it reads as None."""
        if self.consumer is None:
            return None
        try:
            sock = self.connection.connection.transport.sock
        except AttributeError:
            return None
        if sock is None or (hasattr(sock, "pending") and sock.pending()):
            return None
        return sock

    def read_report(self, shard: ShardProcess) -> None:
        try:
            report = shard.pipe.recv()
        except (EOFError, OSError):
            return  # the shard died; reap_shards handles it
        if report[0] == "ready":
            shard.ready = True
            logger.info("shard=%d ready", shard.index)
            return
        _, message_id, result, seconds = report
        assignment, shard.current = shard.current, None
        if assignment is None or assignment.delivery.message_id != message_id:
            logger.error("shard=%d reported a message it was not given", shard.index)
            return
        self.metrics["processing"].labels(assignment.delivery.source).observe(seconds)
        self.crashes.pop(message_id, None)
        self.settle(assignment, result)

    # The broker.

    def settle(self, assignment: Assignment, result: Result) -> None:
        """Acknowledge or return the message: the one place that does."""
        if assignment.generation != self.generation or self.consumer is None:
            return  # its channel is gone; the broker delivers it again
        try:
            if result.acknowledge:
                assignment.message.ack()
            else:
                assignment.message.requeue()
        except self.recoverable_errors() as error:
            self.disconnected(error)
            return
        source = assignment.delivery.source
        self.metrics["processed"].labels(source, result.outcome).inc()
        if result.outcome == DEAD_LETTERED:
            self.metrics["dead_letters"].labels(source).inc()
        elif result.outcome == PROCESSED:
            self.metrics["last_success"].labels(source).set(time.time())

    def recoverable_errors(self) -> tuple:
        errors = (OSError, socket.timeout)
        if self.connection is not None:
            errors += tuple(self.connection.connection_errors)
            errors += tuple(self.connection.channel_errors)
        return errors

    def connect(self) -> None:
        connection = broker.connect()
        address = broker.safe_url(connection)
        try:
            connection.ensure_connection(max_retries=1)
            channel = connection.channel()
            consumer = Consumer(channel, queues=broker.queues(), on_message=self.on_message,
                                auto_declare=True)
            consumer.qos(prefetch_count=self.prefetch)
            consumer.consume()
        except Exception as error:  # kombu raises many kinds here; all mean "not yet"
            self.connect_failures += 1
            delay = min(2.0 ** self.connect_failures, RECONNECT_BACKOFF_MAX)
            logger.error("cannot consume from %s: %s; retrying in %.0f s", address,
                         str(error).strip() or type(error).__name__, delay)
            self.reconnect_at = time.monotonic() + delay
            connection.release()
            return
        self.connection, self.consumer = connection, consumer
        self.generation += 1
        self.connect_failures = 0
        self.backlog_at = 0.0
        self.metrics["connected"].set(1)
        names = ", ".join(queue.name for queue in consumer.queues)
        logger.info("connected to %s, consuming %s (prefetch %d)", address, names,
                    self.prefetch)

    def disconnected(self, error: BaseException) -> None:
        """Forget the channel: its unacknowledged messages go back to the queue."""
        logger.error("lost the broker connection: %s", str(error).strip() or repr(error))
        try:
            self.connection.release()
        except Exception:
            pass
        self.connection = self.consumer = None
        self.metrics["connected"].set(0)
        self.generation += 1
        for shard in self.shards:
            shard.pending.clear()
        self.reconnect_at = time.monotonic() + 1.0

    def pump_broker(self, readable: bool) -> None:
        """Take in what the broker sent, and keep the heartbeat going.

        Reads frames while the socket has some, up to a bound, so that a
        flood of messages does not starve the shards' reports.
        """
        if self.consumer is None:
            return
        try:
            self.connection.heartbeat_check()
            if readable or self.broker_socket() is None:
                for _ in range(MAX_READS_PER_WAKEUP):
                    self.connection.drain_events(timeout=0.01)
                    sock = self.broker_socket()
                    if sock is None or not wait([sock], 0):
                        break
        except TimeoutError:
            pass
        except self.recoverable_errors() as error:
            self.disconnected(error)

    def on_message(self, message: Message) -> None:
        """Queue a received message for its shard. Nothing here may raise: a
        message that cannot even be described is kept as a dead letter."""
        try:
            self.assign(message)
        except Exception as error:
            logger.exception("cannot read a message from the broker")
            self.keep_unreadable(message, error)

    def keep_unreadable(self, message: Message, error: Exception) -> None:
        info = message.delivery_info or {}
        body = message.body if isinstance(message.body, bytes) else \
            str(message.body).encode("utf-8", "surrogatepass")
        delivery = Delivery(exchange=printable(str(info.get("exchange", ""))),
                            routing_key=printable(str(info.get("routing_key", ""))), body=body)
        try:
            keep_dead_letter(delivery, f"unreadable envelope: {type(error).__name__}: {error}",
                             1)
            message.ack()
            self.metrics["dead_letters"].labels(delivery.source).inc()
            self.metrics["processed"].labels(delivery.source, DEAD_LETTERED).inc()
        except Exception:
            logger.exception("msg=%s cannot keep an unreadable message; returning it",
                             delivery.short_id)
            message.requeue()

    def assign(self, message: Message) -> None:
        info = message.delivery_info
        headers = dict(message.headers or {})
        if undecodable.UNDECODABLE in headers:
            raise ValueError(f"cannot decode its {headers[undecodable.UNDECODABLE]}")
        exchange, routing_key = info.get("exchange", ""), info.get("routing_key", "")
        if not exchange and broker.REPLAY_EXCHANGE in headers:
            # A replayed dead letter: restore its original envelope.
            exchange = str(headers.pop(broker.REPLAY_EXCHANGE))
            routing_key = str(headers.pop(broker.REPLAY_ROUTING_KEY, ""))
        body = message.body
        if isinstance(body, str):
            # py-amqp decodes bodies that declare a content encoding.
            try:
                body = body.encode(message.content_encoding or "utf-8", "surrogateescape")
            except (UnicodeError, LookupError):
                body = body.encode("utf-8", "surrogatepass")
        delivery = Delivery(
            exchange=exchange,
            routing_key=routing_key,
            body=body,
            content_type=message.content_type or "",
            content_encoding=message.content_encoding or "",
            headers=headers,
            redelivered=bool(info.get("redelivered")),
        )
        self.metrics["received"].labels(delivery.source).inc()
        if delivery.redelivered:
            self.metrics["redeliveries"].labels(delivery.source).inc()
        if self.stop_signal is not None:
            message.requeue()
            self.metrics["processed"].labels(delivery.source, REQUEUED).inc()
            return
        shard = self.shards[route_to_shard(delivery, len(self.shards))]
        logger.debug("shard=%d repo=%s msg=%s received%s", shard.index,
                     delivery.repository[:100], delivery.short_id,
                     " (redelivered)" if delivery.redelivered else "")
        assignment = Assignment(delivery, message, self.generation,
                                crashes=self.crashes.get(delivery.message_id, 0))
        shard.pending.append(assignment)

    # Stopping.

    def drain(self) -> None:
        """Finish in-flight work within the drain time, return the rest."""
        name = signal.Signals(self.stop_signal).name
        busy = [shard for shard in self.shards if shard.current]
        waiting = sum(len(shard.pending) for shard in self.shards)
        logger.info("received %s: finishing %d in-flight message(s), returning %d to the "
                    "queue", name, len(busy), waiting)
        if self.consumer is not None:
            try:
                self.consumer.cancel()
                for shard in self.shards:
                    while shard.pending:
                        assignment = shard.pending.popleft()
                        if assignment.generation == self.generation:
                            assignment.message.requeue()
                            self.metrics["processed"].labels(
                                assignment.delivery.source, REQUEUED).inc()
            except self.recoverable_errors() as error:
                self.disconnected(error)
        for shard in self.shards:
            # A busy shard reads this after its message; one waiting to retry
            # reads it at once and returns the message unfinished.
            if shard.pipe is not None:
                try:
                    shard.pipe.send(("stop",))
                except OSError:
                    pass
        deadline = time.monotonic() + self.drain_seconds
        while any(shard.current for shard in self.shards) and not self.hurry:
            if time.monotonic() >= deadline:
                logger.warning("drain time of %.0f s is over; abandoning in-flight work to "
                               "the broker", self.drain_seconds)
                break
            self.wait_for_events(timeout=0.2)
            self.reap_dead_without_restart()
        self.stop_shards()
        if self.connection is not None:
            self.connection.release()
        self.metrics["connected"].set(0)
        logger.info("supervisor stopped")

    def reap_dead_without_restart(self) -> None:
        """While draining, a shard that exits is done: it answered `stop`, or it
        died, and then its message goes back to the broker unacknowledged."""
        for shard in self.shards:
            if shard.process is None or shard.process.is_alive():
                continue
            if shard.current is not None and shard.pipe.poll(0):
                self.read_report(shard)  # it reported, then stopped
            if shard.current is not None:
                logger.error("shard=%d repo=%s msg=%s died while draining; the broker will "
                             "deliver its message again", shard.index,
                             shard.current.delivery.repository[:100],
                             shard.current.delivery.short_id)
                shard.current = None
            shard.process.join(0)
            shard.pipe.close()
            shard.process, shard.pipe = None, None

    def stop_shards(self) -> None:
        """Shards that were told to stop exit on their own; the busy ones are killed."""
        for shard in self.shards:
            if shard.current is not None and shard.process is not None:
                shard.process.kill()
        deadline = time.monotonic() + 10
        for shard in self.shards:
            if shard.process is None:
                continue
            shard.process.join(max(0.0, deadline - time.monotonic()))
            if shard.process.is_alive():
                logger.warning("shard=%d did not stop; killing it", shard.index)
                shard.process.kill()
                shard.process.join(5)
