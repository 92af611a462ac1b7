"""counter-py: a Python job whose progress survives failover, like
plugins/counter. On every tick it reads the counter from fenced state, adds
one and writes it back with compare-and-set and the tick's term:

- "committed N under term T (version V)": the write landed;
- "write of N refused: not-leader": this host lost the lead, nothing changed;
- "write of N lost a race: conflict": someone else wrote first;
- "write of N has an unknown outcome: ...": the connection dropped.

Errors from the state interface arrive as componentize_py_types.Err carrying a
StateError_* value."""

import wit_world
from wit_world.imports import host, state, types
from componentize_py_types import Err

KEY = "counter"


def decode(value: bytes) -> tuple[int, int]:
    text = value.decode("utf-8", "replace").split()
    return int(text[0]), int(text[1])


def read() -> tuple[int, int | None, int]:
    """(value, version, term it was written under); raises Err on failure."""
    entry = state.get(KEY)
    if entry is None:
        return 0, None, 0
    value, term = decode(entry.value)
    return value, entry.version, term


class WitWorld(wit_world.WitWorld):
    def on_elected(self, leadership: types.Leadership) -> None:
        current, _, _ = read()
        host.log(types.Level.INFO, f"elected: term {leadership.term}; counter is at {current}")

    def tick(self, leadership: types.Leadership) -> None:
        try:
            current, version, written_under = read()
        except Err as e:
            host.log(types.Level.WARN, f"cannot read the counter: {e.value}")
            return
        if written_under > leadership.term:
            raise Err(f"the counter was written under term {written_under}, newer than ours")
        nxt = current + 1
        try:
            v = state.compare_and_set(KEY, version, f"{nxt} {leadership.term}".encode())
            host.log(types.Level.INFO, f"committed {nxt} under term {leadership.term} (version {v})")
        except Err as e:
            error = e.value
            if isinstance(error, state.StateError_NotLeader):
                host.log(types.Level.WARN, f"write of {nxt} refused: not-leader")
            elif isinstance(error, state.StateError_Conflict):
                host.log(types.Level.WARN, f"write of {nxt} lost a race: conflict")
            elif isinstance(error, state.StateError_Unavailable):
                host.log(types.Level.WARN, f"write of {nxt} has an unknown outcome: {error.value}")
            else:
                raise Err(f"write of {nxt} failed: {error}")

    def on_demoted(self, reason: types.DemoteReason) -> None:
        try:
            current, _, _ = read()
            host.log(types.Level.INFO, f"demoted: counter is at {current}")
        except Err:
            host.log(types.Level.INFO, "demoted: counter unknown")
