"""What the Python benchmark peers share: flags, the JSON event lines, signals.

The peers (kazoo_participant.py, polling_participant.py) speak the protocol
described in benches/peers/README.md: one JSON object per line on stdout,
flushed at once, each with mono_ns = CLOCK_MONOTONIC in nanoseconds.
"""

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time

_OUT = threading.Lock()


def parse_args(description):
    """The flags every peer takes."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--zk", required=True, help="ZooKeeper connect string")
    parser.add_argument("--election", required=True, help="election path")
    parser.add_argument("--id", required=True, help="participant id")
    parser.add_argument("--session-timeout-ms", type=int, required=True)
    parser.add_argument("--tick-ms", type=int, required=True)
    parser.add_argument(
        "--count", type=int, default=1, help="participants in this process"
    )
    args = parser.parse_args()
    if args.count < 1 or args.tick_ms < 1 or args.session_timeout_ms < 1:
        parser.error("--count, --tick-ms and --session-timeout-ms must be positive")
    return args


def start_participants(make, args, stop):
    """Creates and starts one participant per id (make(args, id)); stops
    starting more once a signal arrived. Returns them all."""
    participants = [make(args, i) for i in participant_ids(args)]
    for p in participants:
        p.start()
        if stop.is_set():
            break
    return participants


def participant_ids(args):
    """ID when there is one participant, else ID-0 ... ID-(K-1)."""
    if args.count == 1:
        return [args.id]
    return [f"{args.id}-{i}" for i in range(args.count)]


def emit(event, participant, **fields):
    """Prints one event line with the monotonic clock, and flushes it."""
    record = {"event": event, "id": participant, **fields}
    with _OUT:
        record["mono_ns"] = time.monotonic_ns()
        sys.stdout.write(json.dumps(record, separators=(",", ":")) + "\n")
        sys.stdout.flush()


def until_next(start, period):
    """Seconds to the next multiple of period after start (a fixed rate).

    Periods missed (the process was paused) are skipped, not caught up in a
    burst.
    """
    elapsed = time.monotonic() - start
    return (int(elapsed / period) + 1) * period - elapsed


def session_hex(client):
    """The session id of a connected KazooClient, as 0x<hex>."""
    session_id = client.client_id[0] if client.client_id else 0
    return f"0x{session_id:x}"


def quiet_logging():
    """Library log lines go to stderr, and only errors."""
    logging.basicConfig(
        stream=sys.stderr, level=logging.ERROR, format="%(name)s: %(message)s"
    )


def diagnose(message):
    """A free-form line on stderr (stdout carries only events)."""
    # One write per line, so that lines of concurrent threads do not mix.
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def in_parallel(function, items):
    """Calls function(item) for every item, each on a thread; waits for all."""
    threads = [threading.Thread(target=function, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def shut_down(participants, is_leading):
    """Graceful shutdown of a process's participants: leave, then close.

    Followers leave first and the leaders after them: a leader leaving first
    would elect another participant of this same process, only to stop it
    too. Every participant leaves before any session is closed, so a
    --count 100 leader does not wait for 99 sessions to close. Each step
    runs on all participants at once.
    """
    followers = [p for p in participants if not is_leading(p)]
    leaders = [p for p in participants if is_leading(p)]
    in_parallel(lambda p: p.leave(), followers)
    in_parallel(lambda p: p.leave(), leaders)
    in_parallel(lambda p: p.close(), participants)


def stop_on_signals():
    """An Event set by SIGTERM or SIGINT; a second signal exits at once (130)."""
    stop = threading.Event()

    def handler(signum, frame):
        if stop.is_set():
            sys.stdout.flush()
            # os._exit, not sys.exit: the shutdown in progress holds threads.
            os._exit(130)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop
