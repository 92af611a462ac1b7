/*
 * Benchmark peer: a leader-election participant built on Apache Curator's
 * LeaderLatch (Debian's Curator 5.4.0), running a trivial "job" (a tick
 * every --tick-ms) while the latch says it leads.
 *
 * Usage:
 *   CuratorParticipant --zk HOSTS --election PATH --id ID
 *       --session-timeout-ms N --tick-ms N [--count K]
 *
 * Prints one JSON object per line on stdout (joined, elected, tick, demoted,
 * stopped; see benches/peers/README.md), each with mono_ns = System.nanoTime(),
 * which is CLOCK_MONOTONIC on Linux. SIGTERM/SIGINT: close every latch and
 * client, print "stopped" for each, exit 0.
 *
 * Build with benches/peers/build-curator.sh, run with curator-participant.sh.
 */

import java.util.ArrayList;
import java.util.List;
import java.util.concurrent.Executors;
import java.util.concurrent.ScheduledExecutorService;
import java.util.concurrent.ScheduledFuture;
import java.util.concurrent.TimeUnit;

import org.apache.curator.framework.CuratorFramework;
import org.apache.curator.framework.CuratorFrameworkFactory;
import org.apache.curator.framework.recipes.leader.LeaderLatch;
import org.apache.curator.framework.recipes.leader.LeaderLatchListener;
import org.apache.curator.framework.state.ConnectionState;
import org.apache.curator.retry.ExponentialBackoffRetry;

public final class CuratorParticipant {

    /** Command-line settings shared by every participant of the process. */
    private static final class Settings {
        String zk;
        String election;
        String id;
        int sessionTimeoutMs = -1;
        long tickMs = -1;
        int count = 1;
    }

    /** Serialises stdout so concurrent participants never interleave lines. */
    private static final Object OUT = new Object();

    /** Ticks and the "joined" poll of every participant. */
    private static final ScheduledExecutorService SCHEDULER = Executors.newScheduledThreadPool(2, r -> {
        Thread t = new Thread(r, "participant-scheduler");
        t.setDaemon(true);
        return t;
    });

    /** Set once shutdown begins: a latch won during shutdown does not start the job. */
    private static volatile boolean shuttingDown = false;

    public static void main(String[] args) throws Exception {
        Settings s = parse(args);
        List<Participant> participants = new ArrayList<>();
        for (int i = 0; i < s.count; i++) {
            String id = s.count == 1 ? s.id : s.id + "-" + i;
            participants.add(new Participant(s, id));
        }

        // SIGTERM and SIGINT run the shutdown hooks, as in any Java service;
        // the hook leaves the election and then halts with status 0 (not the
        // 143/130 the JVM would give a signalled exit).
        Runtime.getRuntime().addShutdownHook(new Thread(() -> {
            shutdown(participants);
            System.out.flush();
            Runtime.getRuntime().halt(0);
        }, "participant-shutdown"));
        try {
            for (Participant p : participants) {
                p.start();
            }
        } catch (Exception e) {
            System.err.println("CuratorParticipant: cannot start: " + e);
            Runtime.getRuntime().halt(1); // not exit(): the hook would make it 0
        }
        Thread.currentThread().join(); // Curator's threads run everything else
    }

    /**
     * Closes every participant: first every latch, followers before leaders,
     * then every client.
     *
     * Followers leave first: closing a leader first would elect the next
     * participant of this same process, only to close it too. And all latches
     * close before any client: closing a ZooKeeper 3.8 client takes about
     * 100 ms (ClientCnxnSocketNIO.cleanup sleeps 100 ms) while holding a lock
     * shared by every client of the JVM, so with --count 100 a leader closed
     * after the others' clients would lead on for 10 s.
     */
    private static void shutdown(List<Participant> participants) {
        shuttingDown = true;
        List<Participant> ordered = new ArrayList<>();
        for (Participant p : participants) {
            if (!p.latch.hasLeadership()) {
                ordered.add(p);
            }
        }
        for (Participant p : participants) {
            if (!ordered.contains(p)) {
                ordered.add(p);
            }
        }
        for (Participant p : ordered) {
            p.leave();
        }
        for (Participant p : ordered) {
            p.close();
        }
    }

    /** One LeaderLatch with its own CuratorFramework (and so its own session). */
    private static final class Participant implements LeaderLatchListener {
        final String id;
        final long tickNs;
        final CuratorFramework client;
        final LeaderLatch latch;

        /** The latch's node we last reported as "joined"; a new one is a rejoin. */
        private String joinedPath;
        /** The connection's last state, to give notLeader a reason. */
        private volatile ConnectionState lastState = ConnectionState.CONNECTED;
        /** Whether the job runs (we were elected and not demoted since). */
        private boolean leading;
        private long firstTickNs;
        private ScheduledFuture<?> nextTick;
        private ScheduledFuture<?> joinPoll;

        Participant(Settings s, String id) {
            this.id = id;
            this.tickNs = TimeUnit.MILLISECONDS.toNanos(s.tickMs);
            // Curator's defaults but for the timeouts, which the benchmark sets.
            this.client = CuratorFrameworkFactory.builder()
                    .connectString(s.zk)
                    .sessionTimeoutMs(s.sessionTimeoutMs)
                    .connectionTimeoutMs(Math.min(s.sessionTimeoutMs, 15000))
                    .retryPolicy(new ExponentialBackoffRetry(100, 10))
                    .build();
            this.latch = new LeaderLatch(client, s.election, id);
        }

        void start() throws Exception {
            client.getConnectionStateListenable().addListener((c, state) -> {
                lastState = state;
                System.err.println("curator-participant " + id + ": connection " + state);
            });
            client.start();
            latch.addListener(this);
            latch.start();
            pollJoined(1);
        }

        /**
         * LeaderLatch creates its node in the background and has no callback
         * for it, so poll getOurPath(): every 1 ms until the first node, then
         * every 100 ms to notice a new node after a lost session.
         */
        private void pollJoined(long delayMs) {
            joinPoll = SCHEDULER.schedule(() -> {
                reportJoined();
                synchronized (this) {
                    if (latch.getState() == LeaderLatch.State.STARTED) {
                        pollJoined(joinedPath != null ? 100 : 1);
                    }
                }
            }, delayMs, TimeUnit.MILLISECONDS);
        }

        /** Prints "joined" if the latch has a node we have not reported yet. */
        private synchronized void reportJoined() {
            String path = latch.getOurPath();
            if (path == null || path.equals(joinedPath)) {
                return;
            }
            joinedPath = path;
            String session;
            try {
                session = "0x" + Long.toHexString(client.getZookeeperClient().getZooKeeper().getSessionId());
            } catch (Exception e) {
                session = "unknown";
            }
            emit("{\"event\":\"joined\",\"id\":" + quote(id) + ",\"session\":" + quote(session));
        }

        @Override
        public synchronized void isLeader() {
            if (shuttingDown) {
                return;
            }
            reportJoined(); // the latch may call this before our poll saw its node
            emit("{\"event\":\"elected\",\"id\":" + quote(id));
            leading = true;
            firstTickNs = System.nanoTime();
            tick();
        }

        /**
         * The job: a tick, then the next one at the next multiple of --tick-ms
         * from the first. Missed ticks (after a pause) are skipped rather than
         * run in a burst, as scheduleAtFixedRate would. Locked so that no tick
         * can be printed after "demoted".
         */
        private synchronized void tick() {
            if (!leading) {
                return;
            }
            emit("{\"event\":\"tick\",\"id\":" + quote(id));
            long now = System.nanoTime();
            long next = firstTickNs + ((now - firstTickNs) / tickNs + 1) * tickNs;
            nextTick = SCHEDULER.schedule(this::tick, next - now, TimeUnit.NANOSECONDS);
        }

        @Override
        public synchronized void notLeader() {
            if (!leading) {
                return; // won during shutdown: the job never started
            }
            // The latch calls this from its connection state listener, and
            // Curator does not order listeners, so lastState may be a step
            // behind: ask the client whether it is connected.
            if (client.getZookeeperClient().isConnected()) {
                stopJob("lost leadership");
            } else {
                stopJob(lastState == ConnectionState.LOST ? "connection lost" : "connection suspended");
            }
        }

        /** Stops the ticks and prints "demoted". */
        private synchronized void stopJob(String reason) {
            leading = false;
            nextTick.cancel(false);
            emit("{\"event\":\"demoted\",\"id\":" + quote(id) + ",\"reason\":" + quote(reason));
        }

        /** Leaves the election the way Curator users do: latch.close(). */
        void leave() {
            synchronized (this) {
                if (leading) {
                    // latch.close() (CloseMode.SILENT) does not call notLeader:
                    // the job is stopped here, before the node goes.
                    stopJob("shutdown");
                }
                if (joinPoll != null) {
                    joinPoll.cancel(false);
                }
            }
            try {
                latch.close(); // deletes our node (in the background)
            } catch (Exception e) {
                System.err.println("curator-participant " + id + ": closing the latch: " + e);
            }
        }

        /** Then client.close(): the session ends; "stopped". */
        void close() {
            client.close();
            emit("{\"event\":\"stopped\",\"id\":" + quote(id));
        }
    }

    /** Prints one event line, appending mono_ns, and flushes. */
    private static void emit(String withoutEnd) {
        synchronized (OUT) {
            System.out.print(withoutEnd + ",\"mono_ns\":" + System.nanoTime() + "}\n");
            System.out.flush();
        }
    }

    /** A JSON string literal (ids come from the command line). */
    private static String quote(String s) {
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                b.append('\\').append(c);
            } else if (c < 0x20) {
                b.append(String.format("\\u%04x", (int) c));
            } else {
                b.append(c);
            }
        }
        return b.append('"').toString();
    }

    private static Settings parse(String[] args) {
        Settings s = new Settings();
        for (int i = 0; i < args.length; i++) {
            String flag = args[i];
            if (i + 1 >= args.length) {
                usage("missing value for " + flag);
            }
            String value = args[++i];
            try {
                switch (flag) {
                    case "--zk": s.zk = value; break;
                    case "--election": s.election = value; break;
                    case "--id": s.id = value; break;
                    case "--session-timeout-ms": s.sessionTimeoutMs = Integer.parseInt(value); break;
                    case "--tick-ms": s.tickMs = Long.parseLong(value); break;
                    case "--count": s.count = Integer.parseInt(value); break;
                    default: usage("unknown flag " + flag);
                }
            } catch (NumberFormatException e) {
                usage("not a number for " + flag + ": " + value);
            }
        }
        if (s.zk == null || s.election == null || s.id == null || s.sessionTimeoutMs <= 0 || s.tickMs <= 0
                || s.count < 1) {
            usage("--zk, --election, --id, --session-timeout-ms and --tick-ms are required");
        }
        return s;
    }

    private static void usage(String why) {
        System.err.println("CuratorParticipant: " + why);
        System.err.println("usage: CuratorParticipant --zk HOSTS --election PATH --id ID"
                + " --session-timeout-ms N --tick-ms N [--count K]");
        System.exit(2);
    }
}
