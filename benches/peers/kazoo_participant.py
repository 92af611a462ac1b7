"""Benchmark peer: a leader-election participant on kazoo's Election recipe.

Each participant has its own KazooClient (so its own session) and a thread
in `election.run(job)`; kazoo calls `job` once it holds the election's lock,
and the job ticks every --tick-ms until shutdown. Run it with the bench venv:

    target/bench-venv/bin/python benches/peers/kazoo_participant.py \
        --zk HOSTS --election PATH --id ID \
        --session-timeout-ms N --tick-ms N [--count K]

Kazoo's Election never tells a running job that it lost the lead: on a
SUSPENDED or LOST connection (even after the session expired and another
participant was elected) the job goes on ticking. That is measured as is: a
connection listener only reports the states on stderr, and this peer prints
"demoted" only for its own shutdown (reason "shutdown").
"""

import threading
import time

from kazoo.client import KazooClient

import peer_common
from peer_common import emit


class Participant:
    """One KazooClient and one Election, run on a thread of its own."""

    def __init__(self, args, participant):
        self.id = participant
        self.tick_s = args.tick_ms / 1000
        self.client = KazooClient(hosts=args.zk, timeout=args.session_timeout_ms / 1000)
        self.client.add_listener(self._connection_changed)
        self.election = None
        self.election_path = args.election
        self.leading = False
        self.stop = threading.Event()  # set: the job returns, the lock is released
        self.reported_node = None  # the lock node last reported as "joined"
        self.started = False
        self.thread = threading.Thread(target=self._run, name=participant, daemon=True)

    def start(self):
        self.client.start()
        self.election = self.client.Election(self.election_path, self.id)
        self.thread.start()
        self.started = True

    def _connection_changed(self, state):
        # Kazoo calls listeners on its own thread; they must not block.
        peer_common.diagnose(f"kazoo-participant {self.id}: connection {state}")

    def _run(self):
        # Returns when the job returns (shutdown) or when cancelled.
        self.election.run(self._job)

    def report_joined(self):
        """Prints "joined" once the lock has a node we have not reported."""
        node = self.election.lock.node
        if node is not None and node != self.reported_node:
            self.reported_node = node
            emit("joined", self.id, session=peer_common.session_hex(self.client))

    def _job(self):
        """The leader's work: a tick every --tick-ms until shutdown."""
        if self.stop.is_set():
            return  # won while shutting down: leave without starting the job
        self.report_joined()  # the poller may not have seen the node yet
        self.leading = True
        emit("elected", self.id)
        start = time.monotonic()
        while not self.stop.is_set():
            emit("tick", self.id)
            self.stop.wait(peer_common.until_next(start, self.tick_s))
        emit("demoted", self.id, reason="shutdown")
        self.leading = False

    def leave(self):
        """Leaves the election as kazoo users do."""
        if self.leading:
            self.stop.set()  # the job returns; Election releases the lock
        else:
            self.election.cancel()  # a pending acquire gives up, deletes its node
            self.stop.set()  # in case it was elected meanwhile
        self.thread.join()

    def close(self):
        """Closes the session: client.stop(), client.close(); "stopped"."""
        self.client.stop()
        self.client.close()
        emit("stopped", self.id)


def poll_joined(participants, stop):
    """Reports "joined" for each participant as its lock node appears.

    kazoo's Lock creates the node inside election.run() with no callback, so
    watch the node attribute: every 1 ms until all joined, then every 100 ms
    (a node recreated after a lost session is a rejoin).
    """
    while not stop.is_set():
        for p in participants:
            p.report_joined()
        waiting = any(p.reported_node is None for p in participants)
        stop.wait(0.001 if waiting else 0.1)


def main():
    args = peer_common.parse_args(__doc__.splitlines()[0])
    peer_common.quiet_logging()
    stop = peer_common.stop_on_signals()
    participants = peer_common.start_participants(Participant, args, stop)
    poller = threading.Thread(
        target=poll_joined, args=(participants, stop), daemon=True
    )
    poller.start()

    stop.wait()
    poller.join()
    peer_common.shut_down([p for p in participants if p.started], lambda p: p.leading)


if __name__ == "__main__":
    main()
