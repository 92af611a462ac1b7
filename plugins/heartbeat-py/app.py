"""heartbeat-py: the Python heartbeat. Logs "I am Leader" with its term on
every tick, like plugins/heartbeat; on a schedule (--schedule, --every) it
also names the slot the run is for. Built with componentize-py against wit/
(see plugins/README.md and scripts/build-plugins.sh)."""

import wit_world
from wit_world.imports import host, slots, types

# One instance serves one term: module state starts afresh every term.
ticks = 0


class WitWorld(wit_world.WitWorld):
    def on_elected(self, leadership: types.Leadership) -> None:
        host.log(types.Level.INFO, f"elected: term {leadership.term} id {leadership.participant}")

    def tick(self, leadership: types.Leadership) -> None:
        global ticks
        ticks += 1
        # On a schedule, each tick is one slot's run; in tick mode, None.
        slot = slots.current()
        run = f" slot {slot.id} attempt {slot.attempt}" if slot is not None else ""
        host.log(
            types.Level.INFO,
            f"I am Leader: term {leadership.term} id {leadership.participant} tick {ticks}{run}",
        )

    def on_demoted(self, reason: types.DemoteReason) -> None:
        host.log(types.Level.INFO, f"demoted: {reason.name.lower()} after {ticks} ticks")
