/*
 * The classic mesh start-up of timely_communication, 3 processes, as a Promela model for spin: the baseline that
 * meshd replaces. Spin refutes it (see README.md next to this file; scripts/check-model runs it).
 *
 * Variant A (default): timely_communication. Process i dials every j < i, in order, and accepts from every j > i;
 *   a filled slot is never looked at again during start-up; the process is ready (starts computing) once every slot
 *   is filled; the listener closes then. After that any error on any link makes the process panic (exit), and the
 *   orchestrator restarts it: a fresh process that remembers nothing.
 * Variant B (-DVARIANT_B): Materialize's later start-up with a controller epoch that does not increase when a
 *   process restarts (prior-art.md scenario 8, "trusting a controller epoch"): dials run concurrently in any
 *   order, the accept loop runs until ready, a filled slot whose peer is gone is cleared during start-up, and a new
 *   connection from an already-filled index replaces it. Every process has the same epoch, so the epoch check in
 *   the handshake always says "equal" and is left out: a restarted process is accepted by the old incarnations.
 *
 * Processes are named slot.incarnation in the printed trails (spin -t classic.pml): 1.2 is the second process
 * started in slot 1.
 *
 * Faults: at most KILLS kills (kill -9) of any process at any time; the orchestrator restarts every process that
 * exits (killed or panicked). Incarnations are numbered 1..INCS per slot and wrap around (only equality matters;
 * the counterexamples below need no wrap).
 *
 * Simplification in favour of the baseline: timely's listener accepts exactly as many connections as it has higher
 * slots, so a reconnect from a restarted peer uses up an accept and leaves another slot empty forever; here the
 * accept loop keeps accepting (and overwrites the slot) while any of its slots is empty.
 */

#define N 3
#define IX(p, q) ((p) * N + (q))

#ifndef KILLS
#define KILLS 1
#endif
#ifndef INCS
#define INCS 3
#endif

bool alive[N];
byte inc[N];          /* current incarnation of each slot (0: never started) */
byte conn[N * N];     /* conn[IX(p,q)]: the incarnation of q that p's slot q holds (0: empty) */
bool ready[N];        /* every slot was filled: the process computes */
byte kills;
byte rdy[N];          /* ready and alive, recomputed at the end of every step (a function of the state) */

/* p's view of slot s: itself, or the incarnation its slot holds */
#define V(p, s) (conn[IX(p, s)] + ((s) == (p)) * inc[p])
#define FILLED(p) (conn[IX(p, (p + 1) % N)] != 0 && conn[IX(p, (p + 2) % N)] != 0)
/* p's connection to q is dead: q died or restarted, or q's end no longer holds this incarnation of p */
#define STALE(p, q) (!alive[q] || inc[q] != conn[IX(p, q)] || conn[IX(q, p)] != inc[p])

#ifdef VARIANT_B
#define ACCEPTING(j) (!ready[j])
#define IN_ORDER(p, j) true
#else
/* the listener of j is open while one of j's slots above j is empty */
#define ACCEPTING(j) (!ready[j] && (((j) == 0 && (conn[IX(0, 1)] == 0 || conn[IX(0, 2)] == 0)) || \
                                    ((j) == 1 && conn[IX(1, 2)] == 0)))
/* dials go in order: j only after every slot below j is filled */
#define IN_ORDER(p, j) ((j) == 0 || conn[IX(p, 0)] != 0)
#endif

/* safety: two ready processes agree on the incarnation of every slot (a ready mesh never holds two incarnations of
   one slot) */
#define AGREE(p, r) (!(rdy[p] && rdy[r]) || (V(p, 0) == V(r, 0) && V(p, 1) == V(r, 1) && V(p, 2) == V(r, 2)))
#define CURRENT(p) (V(p, 0) == inc[0] && V(p, 1) == inc[1] && V(p, 2) == inc[2])
#define ALL_READY (rdy[0] && rdy[1] && rdy[2] && CURRENT(0) && CURRENT(1) && CURRENT(2))

inline check() {
    rdy[0] = alive[0] && ready[0]; rdy[1] = alive[1] && ready[1]; rdy[2] = alive[2] && ready[2]
}

inline became_ready(x) {
    if
    :: !ready[x] && FILLED(x) ->
        ready[x] = 1;
        printf("    %d.%d is READY with slots %d.%d %d.%d %d.%d\n", x, inc[x], 0, V(x, 0), 1, V(x, 1), 2, V(x, 2))
    :: else
    fi
}

/* exit: killed, or a panic after start-up; the peers' connections to it go stale */
inline die(x) {
    alive[x] = 0; ready[x] = 0;
    conn[IX(x, 0)] = 0; conn[IX(x, 1)] = 0; conn[IX(x, 2)] = 0
}

/* p dials j (j < p) and j's accept loop takes the connection: both slots are filled */
#define DIAL(p, j) \
    :: d_step { (j) < (p) && alive[p] && alive[j] && !ready[p] && conn[IX(p, j)] == 0 && IN_ORDER(p, j) && \
                ACCEPTING(j) -> \
        conn[IX(p, j)] = inc[j]; conn[IX(j, p)] = inc[p]; \
        printf("%d.%d dials %d.%d: slot filled at both ends\n", p, inc[p], j, inc[j]); \
        became_ready(p); became_ready(j); check() }

/* after start-up, an error on any link panics the process */
#define PANIC(p, q) \
    :: d_step { alive[p] && ready[p] && conn[IX(p, q)] != 0 && STALE(p, q) -> \
        printf("%d.%d sees its link to %d.%d fail and panics (exits)\n", p, inc[p], q, conn[IX(p, q)]); \
        die(p); check() }

#ifdef VARIANT_B
/* during start-up, a filled slot whose peer is gone is cleared and re-established */
#define WATCH(p, q) \
    :: d_step { alive[p] && !ready[p] && conn[IX(p, q)] != 0 && STALE(p, q) -> \
        printf("%d.%d clears its slot of %d.%d (gone)\n", p, inc[p], q, conn[IX(p, q)]); \
        conn[IX(p, q)] = 0; check() }
#else
#define WATCH(p, q)
#endif

active [N] proctype Node() {
end_node:
    do
    DIAL(_pid, (_pid + 1) % N)
    DIAL(_pid, (_pid + 2) % N)
    PANIC(_pid, (_pid + 1) % N)
    PANIC(_pid, (_pid + 2) % N)
    WATCH(_pid, (_pid + 1) % N)
    WATCH(_pid, (_pid + 2) % N)
    od
}

/* the orchestrator starts every slot and restarts whatever exits, as a fresh process */
#define RESTART(x) \
    :: d_step { !alive[x] -> alive[x] = 1; inc[x] = inc[x] % INCS + 1; \
        printf("orchestrator starts %d.%d\n", x, inc[x]); check() }

active proctype Orchestrator() {
end_orch:
    do
    RESTART(0)
    RESTART(1)
    RESTART(2)
    od
}

#define KILL(x) \
    :: d_step { kills < KILLS && alive[x] -> kills++; printf("KILL -9 %d.%d\n", x, inc[x]); die(x); check() }

active proctype Faults() {
end_faults:
    do
    KILL(0)
    KILL(1)
    KILL(2)
    :: break
    od
}

/* safety (pan -N safety, without -a): in every reachable state, ready processes agree on every slot */
never safety {
    do
    :: assert(AGREE(0, 1) && AGREE(0, 2) && AGREE(1, 2))
    od
}

/* liveness (pan -a -f -N live): after the last kill, eventually all three are ready with each other's current
   incarnations, and stay so */
ltl live { <>[] ALL_READY }
