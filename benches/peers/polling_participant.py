"""Benchmark peer: the naive polling election many tutorials show.

A plain KazooClient holds the connection only. Each participant creates an
ephemeral sequential node <election>/p-, then every 1000 ms lists the
election's children and leads while its node has the lowest sequence. A
separate thread ticks every --tick-ms while it believes it leads. Run it with
the bench venv:

    target/bench-venv/bin/python benches/peers/polling_participant.py \
        --zk HOSTS --election PATH --id ID \
        --session-timeout-ms N --tick-ms N [--count K]

Like the tutorials, it trusts its last successful listing: a listing that
fails (connection suspended or lost) changes nothing, so the job goes on
ticking until a listing shows someone else first. If its node is gone (the
session expired), it is demoted and creates a new node, as a rejoin.
"""

import threading
import time

from kazoo.client import KazooClient
from kazoo.exceptions import KazooException, NoNodeError

import peer_common
from peer_common import emit

POLL_S = 1.0
PREFIX = "p-"


class Participant:
    """One KazooClient, a polling thread and a ticking thread."""

    def __init__(self, args, participant):
        self.id = participant
        self.tick_s = args.tick_ms / 1000
        self.path = args.election.rstrip("/") or "/"
        self.client = KazooClient(hosts=args.zk, timeout=args.session_timeout_ms / 1000)
        self.client.add_listener(self._connection_changed)
        self.node = None  # our node's name under the election path
        self.leading = False  # what we believe; guarded by self.changed
        self.stop = threading.Event()
        # Guards leading and node, and wakes the ticker when either changes.
        self.changed = threading.Condition()
        self.poller = threading.Thread(
            target=self._poll, name=f"{participant}-poll", daemon=True
        )
        self.ticker = threading.Thread(
            target=self._tick, name=f"{participant}-tick", daemon=True
        )
        self.started = False

    def _connection_changed(self, state):
        peer_common.diagnose(f"polling-participant {self.id}: connection {state}")

    def start(self):
        self.client.start()
        self.client.ensure_path(self.path)
        self._join()
        self.poller.start()
        self.ticker.start()
        self.started = True

    def _join(self):
        created = self.client.create(
            f"{self.path.rstrip('/')}/{PREFIX}",
            self.id.encode(),
            ephemeral=True,
            sequence=True,
        )
        self.node = created.rsplit("/", 1)[1]
        emit("joined", self.id, session=peer_common.session_hex(self.client))

    def _poll(self):
        """Every POLL_S: lead if our node's sequence is the lowest."""
        start = time.monotonic()
        while not self.stop.is_set():
            try:
                children = [
                    c
                    for c in self.client.get_children(self.path)
                    if c.startswith(PREFIX)
                ]
            except KazooException as error:
                peer_common.diagnose(
                    f"polling-participant {self.id}: listing failed: {error!r}"
                )
            else:
                self._decide(children)
            self.stop.wait(peer_common.until_next(start, POLL_S))

    def _decide(self, children):
        with self.changed:
            if self.stop.is_set():
                return
            # The sequence is the 10-digit suffix; all nodes share the prefix.
            lowest = min(children, default=None)
            if self.node not in children:
                if self.leading:
                    self.leading = False
                    emit("demoted", self.id, reason="node gone")
                try:
                    self._join()
                except KazooException as error:
                    peer_common.diagnose(
                        f"polling-participant {self.id}: rejoin failed: {error!r}"
                    )
            elif lowest == self.node and not self.leading:
                emit("elected", self.id)
                self.leading = True
                self.changed.notify_all()
            elif lowest != self.node and self.leading:
                self.leading = False
                emit("demoted", self.id, reason="not lowest")

    def _tick(self):
        """The job: a tick every --tick-ms while we believe we lead."""
        while True:
            with self.changed:
                self.changed.wait_for(lambda: self.leading or self.stop.is_set())
            start = time.monotonic()
            while not self.stop.is_set():
                with self.changed:
                    if not self.leading:
                        break
                    emit("tick", self.id)
                self.stop.wait(peer_common.until_next(start, self.tick_s))
            if self.stop.is_set():
                return

    def leave(self):
        """Stops the job and deletes our node."""
        with self.changed:
            self.stop.set()
            self.changed.notify_all()
            if self.leading:
                self.leading = False
                emit("demoted", self.id, reason="shutdown")
        self.poller.join()
        self.ticker.join()
        try:
            self.client.delete(f"{self.path.rstrip('/')}/{self.node}")
        except NoNodeError:
            pass
        except KazooException as error:
            peer_common.diagnose(
                f"polling-participant {self.id}: delete failed: {error!r}"
            )

    def close(self):
        """Closes the session; "stopped"."""
        self.client.stop()
        self.client.close()
        emit("stopped", self.id)


def main():
    args = peer_common.parse_args(__doc__.splitlines()[0])
    peer_common.quiet_logging()
    stop = peer_common.stop_on_signals()
    participants = peer_common.start_participants(Participant, args, stop)

    stop.wait()
    peer_common.shut_down([p for p in participants if p.started], lambda p: p.leading)


if __name__ == "__main__":
    main()
