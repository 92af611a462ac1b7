#!/usr/bin/env bash
# Mutation check of zkrun's safety proof: puts each of a small set of known
# bugs (mutants) into the host, one at a time, and runs the chaos checker
# (and, with --tests, the suite tests that name the property) against it.
# Prints caught/missed per mutant. Not part of CI (about 5 minutes per
# mutant); its last result is in docs/chaos.md.
#
#   scripts/mutants.sh [--tests] [--seed N]... [--duration 100s] [mutant...]
#
# Each --seed adds a chaos run per mutant (default: the one seed 20261125).
# A mutant counts as caught firmly with at least 2 violations in a run;
# fewer is printed as "thin".
#
# On a shared machine, MUTANTS_RUN='/work/bin/zk-slot-solo' runs each chaos
# run (and MUTANTS_TESTS='/work/bin/zk-slot' each test run) under that
# prefix, so the builds do not hold the ZooKeeper slots.
#
# Each mutant is a literal edit of one distinctive line; the script stops
# if that line is not found exactly once (the code moved: update the
# anchor). The source is restored after each build and on any exit; the
# mutant binaries are kept in target/mutants/ and the chaos runs use them
# through $ZKRUN_BINARY. At the end zkrun is rebuilt from the real source.
set -euo pipefail
cd "$(dirname "$0")/.."

seeds=()
duration=100s
with_tests=0
only=()
while [ $# -gt 0 ]; do
    case "$1" in
        --tests) with_tests=1 ;;
        --seed) seeds+=("$2"); shift ;;
        --duration) duration=$2; shift ;;
        -*) echo "mutants: unknown option $1" >&2; exit 2 ;;
        *) only+=("$1") ;;
    esac
    shift
done

out=target/mutants
mkdir -p "$out/orig"
files=(host/src/supervisor.rs host/src/state/zookeeper.rs host/src/election/timing.rs host/src/election/machine/follow.rs
    host/src/election/decide.rs host/src/plugin/egress.rs host/src/state/mod.rs host/src/election/machine/lead.rs
    host/src/election/machine.rs)
for f in "${files[@]}"; do
    mkdir -p "$out/orig/$(dirname "$f")"
    cp "$f" "$out/orig/$f"
done
restore() {
    for f in "${files[@]}"; do
        cmp -s "$out/orig/$f" "$f" || cp "$out/orig/$f" "$f"
    done
}
trap 'restore; echo "mutants: source restored; rebuild with cargo build --release -p zkrun" >&2' EXIT

# edit FILE OLD NEW: replaces the one occurrence of OLD (literal) by NEW.
edit() {
    python3 - "$@" <<'PY'
import sys
path, old, new = sys.argv[1:4]
text = open(path).read()
n = text.count(old)
if n != 1:
    sys.exit(f"mutants: anchor found {n} times in {path} (expected once): {old!r}")
open(path, "w").write(text.replace(old, new))
PY
}

# The mutants: name, the tests that name its property, and its edits.
# `none` is the real code: the same run must find nothing.
mutant_none() { :; }
skip_pre_tick_check() {
    # Ticks are scheduled and started while suspended.
    edit host/src/supervisor.rs \
        'if !lead.suspended && lead.instance.is_some() && self.running.is_none() =>' \
        'if lead.instance.is_some() && self.running.is_none() =>'
    edit host/src/supervisor.rs \
        'if self.election.confirmed().is_none_or(|lease| lease.term != lead.term) {' \
        'if false {'
}
mutant_pre_tick() { skip_pre_tick_check; }
mutant_pre_tick_and_permit() {
    skip_pre_tick_check
    edit host/src/supervisor.rs \
        'Arc::new(move || election.confirmed().is_some_and(|lease| lease.term == term))' \
        'Arc::new(move || { let _ = (&election, term); true })'
}
mutant_fence_on_election_path() {
    # The fence checks a node that always exists: the election's own path.
    edit host/src/state/zookeeper.rs \
        'let (fence_path, term) = (self.fence.node_path.clone(), self.fence.term);' \
        'let (fence_path, term) = (self.dir.trim_end_matches("/state").to_string(), self.fence.term);'
}
mutant_late_demotion() {
    edit host/src/election/timing.rs \
        'deadline: period * 2 / 3 }' \
        'deadline: period * 11 / 10 }'
}
mutant_early_takeover() {
    edit host/src/election/machine/follow.rs \
        'self.seen_at + self.deadline + self.deadline * 3 / 20' \
        'self.seen_at + self.deadline / 2'
}

# Issue 28's mutants, written against main as of decide.rs (9996381); the
# line each hits is named, so that they are easy to re-target.
mutant_outside_deletion_fix_removed() {
    # decide.rs, the full-read verdict: a standing lease node of another
    # participant no longer makes the first in line wait (the next in line
    # leads at once after an outside deletion of the leader's node).
    edit host/src/election/decide.rs \
        '(Some(lease), None) => Decision::AwaitStandDown { lease: lease.clone() },' \
        '(Some(_), None) => Decision::Lead,'
}
mutant_shortcut_skips_standing_lease() {
    # decide.rs, the warm-proof verdict: a lease node seen in the last look
    # no longer sends the shortcut back to a full look (issue 22's hole).
    edit host/src/election/decide.rs \
        'Decision::Look { why: "another participant'"'"'s lease node stood in the last look" }' \
        'Decision::Lead'
}
mutant_warm_generation_ignored() {
    # decide.rs: a warm proof taken on an older connection still counts.
    edit host/src/election/decide.rs \
        'if warm.proof_generation != warm.generation {' \
        'if false && warm.proof_generation != warm.generation {'
}
mutant_egress_write_unchecked() {
    # egress.rs, Fenced::poll_write: no permit check on each socket write.
    edit host/src/plugin/egress.rs \
        'return Poll::Ready(Err(io::Error::new(io::ErrorKind::ConnectionAborted, stop)));' \
        'let _ = stop;'
}
mutant_quota_never_refuses() {
    # state/mod.rs, Usage::admit: every write is admitted.
    edit host/src/state/mod.rs \
        'self.rate.take(quota, len.unwrap_or(0), now, within_quota)' \
        '{ let _ = (quota, now, &within_quota); Ok(()) }'
}
mutant_shutdown_keeps_node() {
    # lead.rs (shutdown while leading) and machine.rs (Exit::Shutdown):
    # neither deletes the node nor closes the session; every graceful
    # handover becomes a crash handover.
    edit host/src/election/machine/lead.rs \
        'self.demote(term, DemoteReason::Shutdown);
                            let _ = self.delete_own(session, node, true).await;' \
        'self.demote(term, DemoteReason::Shutdown);
                            let _ = (&session, &node);'
    edit host/src/election/machine.rs \
        'tokio::time::sleep(CLOSE_LINGER).await;
                    self.close(session).await;' \
        'tokio::time::sleep(CLOSE_LINGER).await;
                    std::mem::forget(session);'
}
mutant_demote_at_l() {
    # timing.rs: demotion at L instead of 2L/3 (the logged deadline moves
    # with it: only the independent bound sees it on every grant).
    edit host/src/election/timing.rs \
        'deadline: period * 2 / 3 }' \
        'deadline: period }'
}

mutants=(none pre_tick pre_tick_and_permit fence_on_election_path late_demotion early_takeover
    outside_deletion_fix_removed shortcut_skips_standing_lease warm_generation_ignored egress_write_unchecked
    quota_never_refuses shutdown_keeps_node demote_at_l)
declare -A tests_of=(
    [none]='test(partitioned_leader) | test(sigterm_hands_over) | test(/^state::/)'
    [pre_tick]='test(a_frozen_leader_never_ticks_again) | test(frozen_leader_knows)'
    [pre_tick_and_permit]='test(a_frozen_leader_never_ticks_again) | test(frozen_leader_knows) | test(permit)'
    [fence_on_election_path]='test(/^state::/)'
    [late_demotion]='test(partitioned_leader) | test(quorum_loss_demotes) | test(sigterm_hands_over)'
    [early_takeover]='test(partitioned_leader) | test(sigterm_hands_over) | test(deposed_leaders)'
    [outside_deletion_fix_removed]='test(/^election::/)'
    [shortcut_skips_standing_lease]='test(/^election::/)'
    [warm_generation_ignored]='test(/^election::/)'
    [egress_write_unchecked]='test(/^egress::/)'
    [quota_never_refuses]='test(/^state::/)'
    [shutdown_keeps_node]='test(sigterm_hands_over)'
    [demote_at_l]='test(partitioned_leader) | test(quorum_loss_demotes)'
)
[ ${#only[@]} -gt 0 ] && mutants=("${only[@]}")
[ ${#seeds[@]} -gt 0 ] || seeds=(20261125)

nice cargo build --release -p zkrun -p zkrun-tests --bins >/dev/null
scripts/build-plugins.sh >/dev/null

results=()
for m in "${mutants[@]}"; do
    echo "==> mutant $m" >&2
    restore
    "mutant_$m"
    git --no-pager diff --stat -- "${files[@]}" >&2
    nice cargo build --release -p zkrun --bin zkrun 2>&1 | tail -1 >&2
    cp target/release/zkrun "$out/zkrun-$m"
    tests="-"
    if [ "$with_tests" = 1 ]; then
        # The suite links the mutated library too: run it before restoring.
        if ZKRUN_BINARY="$PWD/$out/zkrun-$m" ${MUTANTS_TESTS:-} cargo nextest run --release -p zkrun-tests --no-fail-fast \
            -E "${tests_of[$m]}" >"$out/$m.tests" 2>&1; then
            tests="missed"
        else
            tests="caught ($(grep -E '^ +FAIL \[' "$out/$m.tests" | sed 's/.*suite //' | sort -u | wc -l) failed)"
        fi
    fi
    restore
    for seed in "${seeds[@]}"; do
        status=0
        ZKRUN_BINARY="$PWD/$out/zkrun-$m" ${MUTANTS_RUN:-} target/release/zkrun-chaos --quiet --seed "$seed" \
            --duration "$duration" --save "$out/$m.$seed.history" >"$out/$m.$seed.report" 2>&1 || status=$?
        violations=$(sed -n 's/^violations: //p' "$out/$m.$seed.report")
        kinds=$(sed -n '/^violations:/,$s/^  \([a-z][a-z ]*[a-z]\)[: ].*/\1/p' "$out/$m.$seed.report" | sort | uniq -c |
            sed 's/^ *\([0-9]*\) \(.*\)/\2 ×\1/' | paste -sd, - | sed 's/,/, /g')
        if [ "$m" = none ]; then
            chaos="${violations:-?} violations (exit $status)${kinds:+: $kinds}"
        elif [ "$status" = 1 ] && [ "${violations:-0}" -ge 2 ]; then
            chaos="caught ($violations): $kinds"
        elif [ "$status" = 1 ] && [ "${violations:-0}" -gt 0 ]; then
            chaos="thin ($violations): $kinds"
        else
            chaos="MISSED (exit $status)"
        fi
        results+=("$(printf '%-30s seed %-9s tests: %-22s chaos: %s' "$m" "$seed" "$tests" "$chaos")")
        echo "${results[-1]}" >&2
    done
done

restore
trap - EXIT
cargo build --release -p zkrun --bin zkrun >/dev/null 2>&1
echo
echo "mutants (seeds ${seeds[*]}, $duration of faults each, $(nproc) cores, $(date -u +%F)):"
printf '%s\n' "${results[@]}"
