"""Renders a benchmark results JSON file as a markdown report and a PNG plot.

    target/bench-venv/bin/python benches/render.py RESULTS.json \
        --markdown OUT.md --plot OUT.png

The results schema is what tests/bench/main.rs writes (benches/results.json
holds the committed run). Every field may be missing (a smoke run measures
less): what is present is rendered, the rest is left out. Peers are shown in the order zkrun, curator, kazoo, polling,
then any others by name.
"""

import argparse
import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # after matplotlib.use
from matplotlib import ticker

KNOWN_PEERS = ["zkrun", "curator", "kazoo", "polling"]

# zkrun_alone keys with a label and a unit; other keys are shown as they are.
ZKRUN_ALONE = {
    "tick_call_us": ("one `tick` call into the plugin", "µs"),
    "instantiate_us": ("a fresh plugin instance (once per term)", "µs"),
    "compile_ms": ("compiling the plugin (once per load)", "ms"),
    "rss_idle_mib": ("resident memory, leading with the default 1 s tick", "MiB"),
    "cpu_1ms_tick_percent": ("CPU of one core, leading with a 1 ms tick", "%"),
}

PERCENTILE_NOTE = (
    "Percentiles are nearest-rank: pN is the smallest sample with at least N% "
    "of the samples at or below it, so with fewer than 100 samples p99 is the "
    "maximum (and with fewer than 10, p90 is too). The median is the middle "
    "sample, or the mean of the two middle ones."
)


def percentile(sorted_values, p):
    """Nearest-rank percentile of an ascending, non-empty list."""
    rank = max(1, math.ceil(p / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def summary(values):
    """n, median, p90, p99, min, max of a list of numbers (None if empty)."""
    values = sorted(v for v in values if isinstance(v, (int, float)))
    if not values:
        return None
    return {
        "n": len(values),
        "median": statistics.median(values),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "min": values[0],
        "max": values[-1],
    }


def fmt(value, digits=None):
    """A number with as many decimals as its size deserves."""
    if value is None:
        return "–"
    if isinstance(value, int) and digits is None:
        return str(value)
    if digits is None:
        size = abs(value)
        digits = 2 if size < 10 else 1 if size < 100 else 0
    return f"{value:,.{digits}f}"


def ordered_peers(mapping):
    """The peers of a per-peer mapping, known ones first."""
    if not isinstance(mapping, dict):
        return []
    known = [p for p in KNOWN_PEERS if p in mapping]
    return known + sorted(p for p in mapping if p not in KNOWN_PEERS)


def table(header, rows):
    """A markdown table; the first column is left-aligned, the rest right."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def stats_table(per_peer, scale=1.0, unit="ms", digits=None):
    """Rows per peer with n, median, p90, p99, min, max (values × scale)."""
    rows = []
    for peer in ordered_peers(per_peer):
        values = per_peer[peer] if isinstance(per_peer[peer], list) else []
        s = summary([v * scale for v in values if isinstance(v, (int, float))])
        if s is None:
            rows.append([peer, 0, "–", "–", "–", "–", "–"])
            continue
        cells = [s[k] for k in ("median", "p90", "p99", "min", "max")]
        rows.append([peer, s["n"]] + [fmt(c, digits) for c in cells])
    header = ["peer", "n"] + [
        f"{k} ({unit})" for k in ("median", "p90", "p99", "min", "max")
    ]
    return table(header, rows)


def machine_section(results):
    """Where it ran: machine, ensemble, session timeout, versions."""
    lines = ["## Machine and versions", ""]
    machine = results.get("machine") or {}
    facts = [
        ("CPU", machine.get("cpu")),
        ("cores", machine.get("cores")),
        ("memory", f"{machine['memory_gib']} GiB" if "memory_gib" in machine else None),
        ("kernel", machine.get("kernel")),
        ("OS", machine.get("os")),
        ("code", results.get("commit") and f"commit {results['commit']}"),
        ("command", results.get("command") and f"`{results['command']}`"),
    ]
    ensemble = results.get("ensemble") or {}
    if ensemble:
        parts = []
        if "servers" in ensemble:
            parts.append(f"{ensemble['servers']} ZooKeeper servers on loopback")
        if "tick_ms" in ensemble:
            parts.append(f"tickTime {ensemble['tick_ms']} ms")
        if "force_sync" in ensemble:
            parts.append("forceSync " + ("on" if ensemble["force_sync"] else "off"))
        facts.append(("ensemble", ", ".join(parts)))
    if "session_timeout_ms" in results:
        facts.append(("session timeout", f"{results['session_timeout_ms']} ms"))
    lines += [f"- {name}: {value}" for name, value in facts if value not in (None, "")]
    versions = results.get("versions") or {}
    if versions:
        lines.append(
            "- versions: " + ", ".join(f"{name} {versions[name]}" for name in versions)
        )
    if len(lines) == 2:
        lines.append("Not recorded.")
    return lines + [""]


def floor_median(results, key="write_then_watch_ms"):
    """The median of one kind of floor sample, or None."""
    floor = (results.get("floor") or {}).get(key) or []
    s = summary(floor)
    return s["median"] if s else None


def graceful_section(results):
    graceful = results.get("graceful")
    if not ordered_peers(graceful):
        return []
    lines = [
        "## Graceful handover",
        "",
        "The leader is stopped with SIGTERM. Time until the next leader is elected (ms).",
        "",
    ]
    lines += stats_table(graceful) + [""]
    floor = floor_median(results)
    zkrun = summary(graceful.get("zkrun") or [])
    if zkrun and floor:
        ratio = fmt(zkrun["median"] / floor, 2)
        lines += [
            f"zkrun's median is {ratio}× the floor (one quorum write and its "
            f"notification, {fmt(floor)} ms; see below).",
            "",
        ]
    return lines


def floor_section(results):
    floor = results.get("floor") or {}
    rows = []
    labels = [
        ("write_then_watch_ms", "one quorum write (a delete) and the watch notification it fires"),
        ("write_then_read_ms", "the same, then one read of the children by the notified client"),
    ]
    for key, label in labels:
        s = summary(floor.get(key) or [])
        if s:
            rows.append(
                [label, s["n"]] + [fmt(s[k]) for k in ("median", "p90", "p99", "min", "max")]
            )
    if not rows:
        return []
    text = (
        "A handover cannot be faster than the old leader's node going (a quorum "
        "write) and the next participant hearing of it (a notification). Recipes "
        "that read the children after the notification (Curator, kazoo) need the "
        "second row; zkrun's next in line acts on the notification alone (its "
        "proof is already warm, see docs/election.md). Measured between two "
        "clients on this ensemble (ms):"
    )
    header = ["floor", "n", "median", "p90", "p99", "min", "max"]
    return ["## Floor", "", text, ""] + table(header, rows) + [""]


def crash_section(results):
    crash = results.get("crash")
    if not ordered_peers(crash):
        return []
    lines = [
        "## Crash handover",
        "",
        (
            "The leader is killed with SIGKILL, so it cannot hand over. Curator, "
            "kazoo and polling wait until the ensemble expires its session (the "
            "session timeout after its last contact); zkrun's next in line takes "
            "over once the dead leader's own lease deadline has passed (2/3 of the "
            "session timeout after its last renewal, plus a 15% margin for clock "
            "rates; see docs/election.md). Time until the next leader is elected (ms)."
        ),
        "",
    ]
    lines += stats_table(crash) + [""]
    timeout = results.get("session_timeout_ms")
    if isinstance(timeout, (int, float)) and timeout > 0:
        lines += [
            f"The same as a ratio of the session timeout T = {timeout} ms:",
            "",
        ]
        lines += stats_table(crash, scale=1 / timeout, unit="×T", digits=3) + [""]
    return lines


def failover_section(results):
    failover = results.get("failover")
    if not ordered_peers(failover):
        return []
    lines = [
        "## Failover of the leader's ZooKeeper server",
        "",
        (
            "The ZooKeeper server the leader's session is connected to is killed "
            "with SIGKILL: the longest pause of the job, and in how many rounds "
            "another participant took over. zkrun and Curator stop the job while "
            "the connection is in doubt and resume it once leadership is confirmed "
            "again; kazoo's Election and the polling recipe never stop it (so "
            "their pause is one tick), which also means they would keep running "
            "it after losing the lead."
        ),
        "",
    ]
    rows = []
    per_round = []
    for peer in ordered_peers(failover):
        rounds = [r for r in failover[peer] if isinstance(r, dict)]
        pauses = summary([r.get("paused_ms") for r in rounds])
        changed = sum(1 for r in rounds if r.get("changed_hands"))
        # Rounds where the killed server was also the ensemble's leader: the
        # whole ensemble stops until the others elect a new one.
        known = [r for r in rounds if "ensemble_leader" in r]
        hit_leader = sum(1 for r in known if r["ensemble_leader"])
        if known:
            cells = [fmt(r.get("paused_ms")) + ("*" if r["ensemble_leader"] else "") for r in known]
            per_round.append(f"- {peer}: " + ", ".join(cells))
        rows.append(
            [
                peer,
                len(rounds),
                fmt(pauses["median"]) if pauses else "–",
                fmt(pauses["max"]) if pauses else "–",
                f"{changed} of {len(rounds)}",
                f"{hit_leader} of {len(known)}" if known else "–",
            ]
        )
    lines += table(
        [
            "peer",
            "rounds",
            "median pause (ms)",
            "max pause (ms)",
            "changed hands",
            "killed server was the ensemble leader",
        ],
        rows,
    )
    if per_round:
        lines += [
            "",
            "Pause per round (ms), with the rounds that also killed the ensemble's "
            "leader marked *:",
            "",
        ] + per_round
    return lines + [""]


def scale_section(results):
    scale = results.get("scale")
    if not ordered_peers(scale):
        return []
    lines = [
        "## Scale",
        "",
        "Graceful handovers with many participants in one election (ms).",
        "",
    ]
    handovers = {
        p: (scale[p] or {}).get("handover_ms") or [] for p in ordered_peers(scale)
    }
    if any(handovers.values()):
        lines += stats_table(handovers) + [""]
    rows = []
    for peer in ordered_peers(scale):
        entry = scale[peer] or {}
        packets = summary(entry.get("packets_per_handover") or [])
        sent = summary(entry.get("sent_per_handover") or [])
        steady = summary(entry.get("steady_packets_per_s") or [])
        rows.append(
            [
                peer,
                fmt(entry.get("participants")),
                (
                    fmt(packets["median"], 0 if packets["median"] % 1 == 0 else 1)
                    if packets
                    else "–"
                ),
                fmt(sent["median"], 0) if sent else "–",
                fmt(steady["median"], 0) if steady else "–",
                fmt(entry.get("watches")),
            ]
        )
    lines += table(
        [
            "peer",
            "participants",
            "extra requests per handover (median)",
            "extra replies + notifications (median)",
            "steady requests/s",
            "watches",
        ],
        rows,
    )
    return lines + [""]


def overlaps_section(results):
    overlaps = results.get("overlaps")
    if not ordered_peers(overlaps):
        return []
    lines = [
        "## Overlaps",
        "",
        "Rounds (graceful, crash and failover measures) in which the old "
        "leader's job ticked after the new leader's had started: the job ran "
        "on two hosts at once.",
        "",
    ]
    rows = [[peer, fmt(overlaps[peer])] for peer in ordered_peers(overlaps)]
    return lines + table(["peer", "job ran on two hosts at once"], rows) + [""]


def zkrun_alone_section(results):
    alone = results.get("zkrun_alone") or {}
    if not alone:
        return []
    lines = ["## zkrun alone", ""]
    rows = []
    for key, value in alone.items():
        label, unit = ZKRUN_ALONE.get(key, (f"`{key}`", ""))
        rows.append([label, f"{fmt(value)} {unit}".strip()])
    return lines + table(["measure", "value"], rows) + [""]


def has_samples(results):
    """Whether any n/median/p90/p99 table will have a number in it."""
    per_peer = [results.get("graceful"), results.get("crash")]
    scale = results.get("scale")
    if isinstance(scale, dict):
        per_peer.append({p: (e or {}).get("handover_ms") for p, e in scale.items()})
    return any(
        isinstance(m, dict) and any(isinstance(v, list) and v for v in m.values())
        for m in per_peer
    )


def verdict_section(results):
    """Where zkrun stands against the bar and the peers, in plain words."""
    graceful = results.get("graceful") or {}
    mine = summary(graceful.get("zkrun") or [])
    if mine is None:
        return []
    lines = ["## Verdict", ""]
    others = {
        p: summary(graceful.get(p) or [])
        for p in ordered_peers(graceful)
        if p != "zkrun" and summary(graceful.get(p) or [])
    }
    beaten = [p for p, s in others.items() if mine["median"] < s["median"]]
    not_beaten = [p for p in others if p not in beaten]
    # Issue 27's bar: within 15% of the floor measured in the same run, and
    # a tail no worse than kazoo's.
    floor = floor_median(results)
    kazoo = others.get("kazoo")
    bar_median = floor is not None and mine["median"] <= floor * 1.15
    bar_p90 = kazoo is not None and mine["p90"] <= kazoo["p90"]
    lines.append(
        f"- Graceful handover: zkrun's median is {fmt(mine['median'])} ms and its "
        f"p90 {fmt(mine['p90'])} ms over {mine['n']} rounds; the bar is a median "
        f"at most 1.15× the floor ({'met' if bar_median else 'NOT met'}) and a p90 "
        f"at most kazoo's ({'met' if bar_p90 else 'NOT met'})."
    )
    if beaten:
        lines.append(f"- It beats {', '.join(beaten)} on the median.")
    if not_beaten:
        lines.append(f"- It does NOT beat {', '.join(not_beaten)} on the median.")
    floor_read = floor_median(results, "write_then_read_ms")
    if floor:
        text = (
            f"- The floor (one quorum write and its notification) is {fmt(floor)} ms "
            f"here: zkrun's median is {mine['median'] / floor:.2f}× that"
        )
        if floor_read:
            text += f"; with one read after the notification it is {fmt(floor_read)} ms"
        lines.append(text + ".")
    crash = results.get("crash") or {}
    timeout = results.get("session_timeout_ms")
    ratios = {
        p: summary(crash.get(p) or [])["median"] / timeout
        for p in ordered_peers(crash)
        if summary(crash.get(p) or []) and timeout
    }
    if ratios:
        listed = ", ".join(f"{p} {r:.2f}" for p, r in ratios.items())
        lines.append(
            f"- Crash handover, median as a fraction of the session timeout: {listed}."
        )
    lines += failover_verdict(results) + scale_verdict(results)
    overlaps = results.get("overlaps") or {}
    if "zkrun" in overlaps:
        lines.append(
            f"- zkrun's job ran on two hosts at once in {overlaps['zkrun']} rounds."
        )
    return lines + [""]


def failover_verdict(results):
    """The failover pause in words: who pauses at all, and for how long."""
    failover = results.get("failover") or {}
    pauses = {
        p: summary([r.get("paused_ms") for r in failover[p] if isinstance(r, dict)])
        for p in ordered_peers(failover)
    }
    mine = pauses.get("zkrun")
    if not mine:
        return []
    text = (
        f"- Failover of the leader's ZooKeeper server: zkrun pauses its job for "
        f"{fmt(mine['median'])} ms (median; at most {fmt(mine['max'])} ms, when the "
        "killed server was also the ensemble's leader and the ensemble had to "
        "elect a new one), then resumes with the same term"
    )
    if pauses.get("curator"):
        text += f"; Curator, which also pauses, {fmt(pauses['curator']['median'])} ms"
    unpaused = [p for p in ("kazoo", "polling") if pauses.get(p)]
    if unpaused:
        text += (
            f". {' and '.join(unpaused)} show only a tick's gap because they never "
            "pause: their job runs on while leadership is in doubt, which zkrun "
            "refuses to do, so on this measure zkrun trades a short pause for safety"
        )
    return [text + "."]


def scale_verdict(results):
    """Requests per handover in a large election, and whether that is a herd."""
    scale = results.get("scale") or {}
    entry = scale.get("zkrun") or {}
    packets = summary(entry.get("packets_per_handover") or [])
    if not packets or not entry.get("participants"):
        return []
    medians = {
        p: summary((scale[p] or {}).get("packets_per_handover") or [])
        for p in ordered_peers(scale)
        if p != "zkrun"
    }
    others = ", ".join(f"{p} {fmt(m['median'], 0)}" for p, m in medians.items() if m)
    return [
        f"- {entry['participants']} participants: a zkrun handover costs about "
        f"{fmt(packets['median'], 0)} extra requests ({others}). They are its lease "
        "machinery, the same whatever the size of the election: the new leader "
        "creates its lease node and watches its own node; the new next in line "
        "looks once, arms its watches and starts its warm proof. No herd: "
        "tests/suite/election.rs checks that only those two participants do anything."
    ]


def markdown(results, plot_path, markdown_path):
    title = f"# zkrun benchmark, {results.get('date', 'undated')}"
    if results.get("mode"):
        title += f" ({results['mode']} run)"
    lines = [title, ""]
    lines += [
        "zkrun against Apache Curator's `LeaderLatch`, kazoo's `Election` and a "
        "polling recipe, in one run on one ZooKeeper ensemble. Reproduce with "
        "`scripts/bench.sh` (a few rounds of everything: `scripts/bench.sh "
        "--smoke`).",
        "",
    ]
    lines += verdict_section(results)
    lines += machine_section(results)
    if plot_path:
        relative = os.path.relpath(
            plot_path, os.path.dirname(os.path.abspath(markdown_path))
        )
        lines += [f"![graceful and crash handover per peer]({relative})", ""]
    if has_samples(results):
        lines += [PERCENTILE_NOTE, ""]
    lines += (
        graceful_section(results)
        + crash_section(results)
        + failover_section(results)
        + scale_section(results)
        + overlaps_section(results)
        + floor_section(results)
        + zkrun_alone_section(results)
        + footprint_section()
    )
    notes = [n for n in results.get("notes") or [] if isinstance(n, str)]
    if notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(lines)


def footprint_section():
    """benches/footprint.md, written from `zkrun-bench --footprint`, verbatim."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "footprint.md")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [f.read().rstrip(), ""]


def strip_and_box(ax, per_peer, log):
    """A box per peer with every sample drawn over it, jittered sideways."""
    peers = [
        p
        for p in ordered_peers(per_peer)
        if isinstance(per_peer[p], list) and per_peer[p]
    ]
    data = []
    for peer in peers:
        values = [v for v in per_peer[peer] if isinstance(v, (int, float))]
        data.append([v for v in values if v > 0] if log else values)  # log: > 0 only
    if not any(data):
        ax.text(
            0.5, 0.5, "not measured", ha="center", va="center", transform=ax.transAxes
        )
        ax.set_xticks([])
        ax.set_yticks([])
        return False
    positions = range(1, len(peers) + 1)
    ax.boxplot(data, positions=positions, widths=0.5, showfliers=False)
    for x, values in zip(positions, data):
        n = len(values)
        # Deterministic jitter, so the same results give the same picture.
        offsets = [((i * 0.618) % 1 - 0.5) * 0.3 if n > 1 else 0 for i in range(n)]
        ax.scatter([x + o for o in offsets], values, s=12, alpha=0.6, zorder=3)
    ax.set_xticks(list(positions), [f"{p}\n(n={len(d)})" for p, d in zip(peers, data)])
    if log:
        ax.set_yscale("log")
        # Plain numbers (20, not 2×10¹); minor ticks labelled too when the
        # data spans less than a decade, or the axis would have no label.
        plain = ticker.FuncFormatter(lambda v, _: f"{v:g}")
        ax.yaxis.set_major_formatter(plain)
        values = [v for vs in data for v in vs]
        narrow = max(values) < 10 * min(values)
        ax.yaxis.set_minor_formatter(plain if narrow else ticker.NullFormatter())
    ax.grid(axis="y", which="both", alpha=0.3)
    return True


def plot(results, path):
    """Two panels: graceful handover (log ms), crash handover (× timeout)."""
    fig, (graceful_ax, crash_ax) = plt.subplots(1, 2, figsize=(12, 5), dpi=100)
    graceful_ax.set_title("Graceful handover (leader stopped with SIGTERM)")
    if strip_and_box(graceful_ax, results.get("graceful") or {}, log=True):
        graceful_ax.set_ylabel("ms to the next leader (log scale)")

    crash_ax.set_title("Crash handover (leader killed)")
    crash = results.get("crash") or {}
    timeout = results.get("session_timeout_ms")
    if isinstance(timeout, (int, float)) and timeout > 0:
        ratios = {
            p: [v / timeout for v in vs if isinstance(v, (int, float))]
            for p, vs in crash.items()
            if isinstance(vs, list)
        }
        if strip_and_box(crash_ax, ratios, log=False):
            crash_ax.axhline(1.0, color="grey", linestyle="--", linewidth=1)
            crash_ax.set_ylabel(
                f"time to the next leader ÷ session timeout ({timeout} ms)"
            )
    elif strip_and_box(crash_ax, crash, log=False):
        crash_ax.set_ylabel("ms to the next leader")

    title = f"zkrun benchmark, {results.get('date', 'undated')}"
    if results.get("mode"):
        title += f" ({results['mode']})"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", help="results JSON file")
    parser.add_argument("--markdown", required=True, help="report to write")
    parser.add_argument("--plot", required=True, help="PNG to write")
    args = parser.parse_args()
    with open(args.results, encoding="utf-8") as f:
        results = json.load(f)
    if not isinstance(results, dict):
        sys.exit(f"render.py: {args.results} is not a JSON object")
    for path in (args.markdown, args.plot):
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    plot(results, args.plot)
    with open(args.markdown, "w", encoding="utf-8") as f:
        f.write(markdown(results, args.plot, args.markdown))


if __name__ == "__main__":
    main()
