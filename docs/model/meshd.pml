/*
 * meshd's protocol v2 as a Promela model for spin: N slots (2 or 3), both epoch modes, crashes, zombies, ghost
 * hellos, link timeouts and retry loops. How to run it and what each property means: README.md next to this file;
 * scripts/check-model runs every check.
 *
 * The deciding rules are NOT written here: judge, conclude and move come from rules.pml, which
 * `python -m meshd.explore.tables` generates from the code (meshd/core/hello.py, MeshModel.judge), and a test
 * fails when it differs from what the code decides. This file is the mechanics around them, modelled on
 * meshd/core/mesh.py (MeshModel: judge, conclude, link_ended, view_received, _announce, _reevaluate, _move) and
 * meshd/core/slot.py (Slot.offer, release), and on meshd/explore (world.py, steps.py), which runs the real code.
 *
 * Compile-time switches (spin -DNAME ...):
 *   N=2|3        slots (default 2)
 *   CELLS=1|2    process records per slot (default 2 with ZOMBIE, else 1): with 2, a replacement can start while
 *                the old incarnation still runs (ZOMBIE) or while a ghost hello of the dead one is still queued
 *   FIXED        fixed epochs from a controller (R6): a process that died is replaced in a new epoch, one that
 *                exited 75 in the current epoch; default: self-minted generations (--epoch auto)
 *   NOBUMP       with FIXED: the controller restarts a dead process in the same epoch (breaks A4; S4 must fail)
 *   MAXF=n       faults in total (default 1), after which none
 *   NOKILL       no kill -9 faults;   ZOMBIE  zombie faults (the orchestrator replaces a live process, which runs
 *                on and dies later);  ONEZOMBIE  at most one of them;  NOLOSS  no link timeouts
 *   ZSLOT=s, KSLOT=s  zombies only of slot s, kills only of slot s (finding 1's configuration)
 *   VQ=n         VIEW frames in flight per direction (default 3 * N - 3; an assertion says when it is too small)
 *   KMAX=n       the gap choices of a mint are 0..KMAX (default 3), RG=n  ready generations remembered (default
 *                3): assertions say when either is too small
 * Mutations that revert one rule of the fix of the first design (docs/design.md §8, meshd/sim/variants.py); each
 * overrides the tables of rules.pml, or the mechanics, after the #include:
 *   NO_LEAVE         (Action.LEAVE, any answer) -> NOTHING and (LEAVE, SEALED) -> STAY: the refusing end of an
 *                    equal-epoch conflict never leaves its generation
 *   NO_CONSENT       (FOLLOW, SEALED) -> ADOPT: a newer generation is joined although it holds our slot
 *   FULL_VIEWS_ONLY  views go out only when full: a link down is not announced to the other peers
 *   HELLO_ALONE      (FOLLOW, no answer) -> ADOPT, (LEAVE, no answer) -> LEAVE: a ghost hello decides
 *   FIRST_DESIGN     all four
 *
 * Abstractions (the rules are the code's; the mechanics are coarse):
 * - No time: a timeout, a back-off, a restart delay is a step that may happen at any moment. Retry loops retry for
 *   ever (back-off abstracted): a process dials a peer process whenever it has no link to that peer's slot.
 * - Processes live in cells (CELLS per slot); a slot's process is reborn in a free cell (dead, every connection
 *   of it finished at both ends). Incarnations are numbered per slot 1..7 (the real ones are random 64-bit ids;
 *   only equality matters); a slot is started at most 7 times (more would be a restart loop: liveness fails).
 * - Connections: one record per pair of cells of different slots; a dial opens it when both ends are closed
 *   (either end may dial: who dialed matters only to the tie-break of crossed dials, which is not modelled and is
 *   unit-tested, tests/test_slot.py). Each direction is a FIFO: the hello, then the answer, then VIEW frames, then
 *   the end of stream (what TCP delivers in order). A process that ends (kill, exit 75) closes its ends: what it
 *   sent is still delivered, so its hello may be judged after its death (a ghost hello) and its answer never
 *   arrives (ANS_NONE). Byte formats, heartbeats and refusal texts are not modelled; a frame refusing an offered
 *   link (slot RETIRED) is modelled as the close it causes.
 * - Generations (auto) are their order: g[] holds the rank of every generation the state refers to (processes,
 *   hellos in flight, a mint's floor) and is renumbered after every step. A birth mints at any position, a mint
 *   above a floor at any position above it (what an arbitrary wall clock allows); generations are unique (the
 *   nonce). VIEW frames carry no generation: a link end exists only in the generation it was accepted in (a move
 *   drops every link in the same step), so every VIEW read on a link is of the reader's generation.
 *
 * Processes are printed slot.incarnation in trails (spin -t): 1.2 is the second process of slot 1; "gen" is the
 * rank of the generation at that moment (auto) or the epoch (fixed).
 */

#include "rules.pml"

#ifndef N
#define N 2
#endif
#if N < 2 || N > 3
#error "N is 2 or 3"
#endif
#ifndef CELLS
#ifdef ZOMBIE
#define CELLS 2
#else
#define CELLS 1
#endif
#endif
#ifndef MAXF
#define MAXF 1
#endif
#ifndef VQ
#define VQ (3 * N - 3)
#endif
#define ICAP 7

#ifdef FIRST_DESIGN
#define NO_LEAVE
#define NO_CONSENT
#define FULL_VIEWS_ONLY
#define HELLO_ALONE
#endif

#ifdef FIXED
#define AUTO 0
#else
#define AUTO 1
#endif

#define NP (N * CELLS)                       /* cells */
#define NR ((N * (N - 1) / 2) * CELLS * CELLS)   /* connection records */
#define NE (2 * NR)                          /* record ends */
#ifndef RG
#define RG 3                                 /* ghost entries: generations that have been ready (S4) */
#endif
#define NG (NP + NE + 1 + RG)                /* generation entries: cells, hellos, a mint's floor, ready ones */

#define SL(c) ((c) / CELLS)                  /* the slot of cell c */
#define CS(c, s) ((c) * N + (s))             /* cell c's entry for slot s */
/* records: slot pair (0,1) -> 0, (0,2) -> 1, (1,2) -> 2; end 0 is the cell of the lower slot */
#define RPS(r) ((r) / (CELLS * CELLS))
#define RLO(r) ((RPS(r) == 2) * CELLS + ((r) % (CELLS * CELLS)) / CELLS)
#define RHI(r) ((1 + (RPS(r) > 0)) * CELLS + (r) % CELLS)
#define ECELL(e) (((e) % 2) == 0 -> RLO((e) / 2) : RHI((e) / 2))
#define RECL(i, j) ((SL(i) + SL(j) - 1) * CELLS * CELLS + ((i) % CELLS) * CELLS + (j) % CELLS)  /* SL(i) < SL(j) */
#define REC(i, j) (SL(i) < SL(j) -> RECL(i, j) : RECL(j, i))
#define END(i, j) (2 * REC(i, j) + (SL(i) > SL(j)))     /* cell i's end of its record with cell j */
#define HEP(e) g[NP + (e)]                   /* the epoch of the hello sent to end e */
#define MFL g[NP + NE]                       /* the floor of a mint */
#define RGV(k) g[NP + NE + 1 + (k)]           /* ghost: a generation some process has been ready in */

/* ----- state ----- */

/* per cell */
bool alive[NP];
bool zb[NP];          /* a zombie: the orchestrator replaced it; it runs on until it dies */
byte cinc[NP];        /* its incarnation (kept after death while its hellos may still be read) */
byte g[NG];           /* epochs: g[c] of cell c (0 when dead), HEP(e) of hellos, MFL; auto: ranks, fixed: epochs */
bool sealed[NP];      /* auto: ready in its generation while every peer's VIEW said ready (R4) */
bool rd[NP];          /* state READY (MeshModel.state is READY) */
bool sf[NP];          /* sent_full: our last VIEW sent was full */
byte bf[NP];          /* ghost: bit k set, RGV(k) was ready before this process started (S4) */
/* per cell and slot */
byte mem[NP * N];     /* auto: members, the incarnation accepted in each slot in our generation (write-once) */
byte cur[NP * N];     /* our link in that slot: the far cell + 1 (0: none); row UP iff cur != 0 */
byte sinc[NP * N];    /* Slot.incarnation: the peer incarnation that last held the link */
byte sret[NP * N];    /* Slot.retired: bit i set, incarnation i replaced while the replacement holds the link */
bool vv[NP * N];      /* a VIEW was received on the current link ... */
short vw[NP * N];     /* ... this one: incarnations 3 bits per slot, + 512 if ready */
/* per record end: its phase and what is in flight to it (hello, answer, VIEWs, end of stream, in that order) */
byte ph[NE];          /* 0 closed, 1 awaiting the peer's hello, 2 awaiting its answer, 3 link */
byte act[NE];         /* the action pending from our judgement */
bool mv[NE];          /* our process moved to another generation since it sent its hello here */
bool hh[NE];          /* the peer's hello is in flight (its epoch: HEP, its incarnation: the far cell's) */
byte ha[NE];          /* the peer's answer in flight: ANS_x + 1, 0 none */
bool he[NE];          /* the end of stream is in flight */
byte vqn[NE];
short vq[NE * VQ];
/* the orchestrator, the faults, the controller */
byte curc[N];         /* the orchestrator's process of each slot: cell + 1 (0: to start) */
byte binc[N];         /* incarnations started per slot */
byte fences[N];       /* exits 75 per slot, zombies' exits not counted (a zombie is the fault) */
byte faults;
byte ctl = 1;         /* fixed: the controller's newest epoch */
byte bumps;           /* fixed: how often it gave a new epoch */
bool zever;           /* a zombie existed in this run: A5 broken, S2 and S4 not claimed */

/* derived at the end of every step (functions of the state: no extra states) */
byte freec[N];        /* a free cell of each slot + 1 */
byte gmax;            /* the largest generation rank */
bool allr;            /* the liveness goal, see ALL_READY below */

/* scratch, zeroed at the end of every step (not hidden: see the note in done) */
byte xc, xd, xe, xsl, xi, xg, xrel, xh, xq, xf, xa, xt, xo, xw, xk;
byte cf, sd, se, sa, dl, dd, pm, rn, rv1, rr, rf, ka, kb, ks, kd, ke;
short xv;

/* ----- views ----- */

#define VI(c, s) ((s) == SL(c) -> cinc[c] : (cur[CS(c, s)] != 0 -> cinc[cur[CS(c, s)] - 1] : 0))
#define FULLS(c, s) ((s) == SL(c) || cur[CS(c, s)] != 0)
#define AGS(c, s) ((s) == SL(c) || (cur[CS(c, s)] != 0 && vv[CS(c, s)] && vw[CS(c, s)] % 512 == VP(c)))
#define RDS(c, s) ((s) == SL(c) || vw[CS(c, s)] / 512 == 1)
#if N == 2
#define VP(c) (VI(c, 0) + 8 * VI(c, 1))
#define FULL(c) (FULLS(c, 0) && FULLS(c, 1))
#define AGREED(c) (AGS(c, 0) && AGS(c, 1))
#define ALLVR(c) (RDS(c, 0) && RDS(c, 1))
#else
#define VP(c) (VI(c, 0) + 8 * VI(c, 1) + 64 * VI(c, 2))
#define FULL(c) (FULLS(c, 0) && FULLS(c, 1) && FULLS(c, 2))
#define AGREED(c) (AGS(c, 0) && AGS(c, 1) && AGS(c, 2))
#define ALLVR(c) (RDS(c, 0) && RDS(c, 1) && RDS(c, 2))
#endif
#define VF(c) (VP(c) + 512 * rd[c])          /* our VIEW frame: the view and the ready flag */

#define IDLE(r) (ph[2 * (r)] == 0 && ph[2 * (r) + 1] == 0)
/* the gap choices of a step that may mint: every step that can mint is one d_step per choice k (the guard), so
   that the choice is part of the step; a choice beyond the gaps there are is the last gap (the same successor) */
#ifndef KMAX
#define KMAX 3       /* 2, 3 or 4 */
#endif
#if KMAX == 2
#define KCHOICES(M, a) M(a, 0) M(a, 1) M(a, 2)
#elif KMAX == 3
#define KCHOICES(M, a) M(a, 0) M(a, 1) M(a, 2) M(a, 3)
#else
#define KCHOICES(M, a) M(a, 0) M(a, 1) M(a, 2) M(a, 3) M(a, 4)
#endif
#define GAP(k) ((k) == 0 || (k) <= gmax)

/* ----- the deciding rules: rules.pml, with the mutations applied on top ----- */

inline decide_conclusion(action, answer, outcome) {
    conclude(action, answer, outcome);
#ifdef NO_LEAVE
    if
    :: action == ACT_LEAVE -> outcome = OUT_NOTHING
    :: else
    fi;
#endif
#ifdef NO_CONSENT
    if
    :: action == ACT_FOLLOW && answer == ANS_SEALED -> outcome = OUT_ADOPT
    :: else
    fi;
#endif
#ifdef HELLO_ALONE
    if
    :: answer == ANS_NONE && action == ACT_FOLLOW -> outcome = OUT_ADOPT
    :: answer == ANS_NONE && action == ACT_LEAVE -> outcome = OUT_LEAVE
    :: else
    fi;
#endif
    skip
}

inline decide_move(outcome, standing, what) {
    move(outcome, standing, what);
#ifdef NO_LEAVE
    if
    :: outcome == OUT_LEAVE && standing == STAND_SEALED -> what = MOVE_STAY
    :: else
    fi;
#endif
    skip
}

/* ----- mechanics ----- */

/* end e closes (its process closes it, or ends): it reads nothing more; the far end reads the end of stream after
   whatever is in flight to it */
inline close_end(e) {
    ph[e] = 0; act[e] = 0; mv[e] = 0; hh[e] = 0; HEP(e) = 0; ha[e] = 0; he[e] = 0;
    cf = 0;
    do
    :: cf < VQ -> vq[(e) * VQ + cf] = 0; cf++
    :: else -> break
    od;
    vqn[e] = 0;
    cf = (e) ^ 1;
    if
    :: ph[cf] != 0 -> he[cf] = 1
    :: else
    fi
}

/* cell c sends its VIEW on its link in slot s (the frame is built when it goes out; a frame equal to the last one
   queued is left out: reading it twice changes nothing) */
inline send_view(c, s) {
    sd = cur[CS(c, s)] - 1;
    se = END(sd, c);
    if
    :: ph[se] != 0 ->
        xv = VF(c);
        if
        :: vqn[se] > 0 && vq[se * VQ + vqn[se] - 1] == xv -> skip
        :: else ->
            assert(vqn[se] < VQ);      /* VQ too small */
            vq[se * VQ + vqn[se]] = xv; vqn[se]++
        fi
    :: else
    fi;
    xv = 0
}

inline send_all(c) {
    sa = 0;
    do
    :: sa < N ->
        if
        :: sa != SL(c) && cur[CS(c, sa)] != 0 -> send_view(c, sa)
        :: else
        fi;
        sa++
    :: else -> break
    od
}

/* MeshModel._announce: our view goes to every up link when it is full, and once more when it stops being full */
inline announce(c) {
    if
    :: FULL(c) -> sf[c] = 1; send_all(c)
#ifndef FULL_VIEWS_ONLY
    :: !FULL(c) && sf[c] -> sf[c] = 0; send_all(c)
#endif
    :: else
    fi
}

/* ghost for S4: the generation of c has been ready */
inline note_ready(c) {
    rf = 0; rn = 0;
    do
    :: rn < RG -> rf = rf || RGV(rn) == g[c]; rn++
    :: else -> break
    od;
    rn = 0;
    do
    :: !rf && rn < RG && RGV(rn) != 0 -> rn++
    :: !rf && rn < RG && RGV(rn) == 0 -> RGV(rn) = g[c]; rf = 1
    :: else -> break
    od;
    assert(rf);        /* RG too small */
    rn = 0; rf = 0
}

/* MeshModel._reevaluate (R4): ready on agreement; sealed once every peer's VIEW says ready too */
inline reeval(c) {
    if
    :: AGREED(c) ->
        if
        :: !rd[c] ->
            rd[c] = 1;
            printf("    %d.%d READY in gen %d, view %d\n", SL(c), cinc[c], g[c], VP(c));
            note_ready(c);
            announce(c)
        :: else
        fi;
        if
        :: AUTO && !sealed[c] && ALLVR(c) -> sealed[c] = 1; printf("    %d.%d sealed\n", SL(c), cinc[c])
        :: else
        fi
    :: else ->
        if
        :: rd[c] -> rd[c] = 0; announce(c)
        :: else
        fi
    fi
}

/* MeshModel.link_ended for the current link of cell c in slot s (far cell d): Slot.release, row down */
inline link_down(c, s, d) {
    if
    :: cur[CS(c, s)] == (d) + 1 ->
        cur[CS(c, s)] = 0; sret[CS(c, s)] = 0; vv[CS(c, s)] = 0; vw[CS(c, s)] = 0;
        announce(c); reeval(c)
    :: else
    fi
}

/* MeshModel._move (R5): an open process changes generation in place: every link dropped, members reset; the
   exchanges in progress decide nothing any more (mv) */
inline leave_generation(c) {
    assert(!sealed[c]);       /* S5: a sealed process never changes generation in place */
    printf("    %d.%d leaves gen %d, drops its links\n", SL(c), cinc[c], g[c]);
    dl = 0;
    do
    :: dl < N ->
        if
        :: dl != SL(c) && cur[CS(c, dl)] != 0 ->
            kd = cur[CS(c, dl)] - 1; ke = END(c, kd); close_end(ke);
            cur[CS(c, dl)] = 0; sret[CS(c, dl)] = 0
        :: else
        fi;
        mem[CS(c, dl)] = 0; vv[CS(c, dl)] = 0; vw[CS(c, dl)] = 0;
        dl++
    :: else -> break
    od;
    pm = 0;
    do
    :: pm < NP ->
        if
        :: SL(pm) != SL(c) ->
            ke = END(c, pm);
            if
            :: ph[ke] == 1 || ph[ke] == 2 -> mv[ke] = 1
            :: else
            fi
        :: else
        fi;
        pm++
    :: else -> break
    od;
    sf[c] = 0; rd[c] = 0
}

/* the process in cell c ends: killed (crashed: the controller counts a death) or exit 75 */
inline die(c, crashed) {
    dd = 0;
    do
    :: dd < NP ->
        if
        :: SL(dd) != SL(c) ->
            ke = END(c, dd);
            if
            :: ph[ke] != 0 -> close_end(ke)
            :: else
            fi
        :: else
        fi;
        dd++
    :: else -> break
    od;
    dd = 0;
    do
    :: dd < N ->
        mem[CS(c, dd)] = 0; cur[CS(c, dd)] = 0; sinc[CS(c, dd)] = 0; sret[CS(c, dd)] = 0;
        vv[CS(c, dd)] = 0; vw[CS(c, dd)] = 0;
        dd++
    :: else -> break
    od;
    alive[c] = 0; g[c] = 0; sealed[c] = 0; rd[c] = 0; sf[c] = 0; bf[c] = 0;
    if
    :: curc[SL(c)] == (c) + 1 ->
        curc[SL(c)] = 0;
#if defined(FIXED) && !defined(NOBUMP)
        if
        :: crashed -> ctl++; bumps++      /* R6: a death gets a new epoch */
        :: else
        fi
#endif
    :: else
    fi;
    zb[c] = 0
}

inline fence(c) {
    printf("    %d.%d exits 75\n", SL(c), cinc[c]);
    if
    :: !zb[c] -> fences[SL(c)]++
    :: else
    fi;
    die(c, 0)
}

/* cell c gets a new generation above the floor MFL (0: anywhere), in gap xk: above xk of the ranks above MFL */
inline mint(c) {
    renumber();
    assert(gmax - MFL <= KMAX);      /* more gaps than choices: raise KMAX */
    if
    :: xk > gmax - MFL -> xk = gmax - MFL
    :: else
    fi;
    rn = 0;
    do
    :: rn < NG -> g[rn] = 2 * g[rn]; rn++
    :: else -> break
    od;
    g[c] = 2 * (MFL / 2 + xk) + 1; MFL = 0;
    printf("    %d.%d mints a generation: gap %d\n", SL(c), cinc[c], xk)
}

/* ghost: a ready generation that nothing holds any more (no process, no hello) can never be joined again */
inline forget_ready() {
#ifndef FIXED
    ks = 0;
    do
    :: ks < RG ->
        rf = 0; rn = 0;
        do
        :: rn < NP + NE + 1 -> rf = rf || (g[rn] == RGV(ks)); rn++
        :: else -> break
        od;
        if
        :: !rf && RGV(ks) != 0 ->
            RGV(ks) = 0; rn = 0;
            do
            :: rn < NP -> bf[rn] = bf[rn] & (255 - (1 << ks)); rn++
            :: else -> break
            od
        :: else
        fi;
        ks++
    :: else -> break
    od;
    rf = 0; rn = 0; ks = 0
#else
    skip           /* fixed: the controller may give an epoch again (NOBUMP): never forgotten */
#endif
}

/* auto: generations as ranks 1.. (0: none), order and equality kept */
inline renumber() {
#ifndef FIXED
    rr = 0; rn = 0;
    do
    :: rn < NG -> if :: g[rn] > rr -> rr = g[rn] :: else fi; rn++
    :: else -> break
    od;
    kd = rr; rr = 0; rv1 = 1;
    do
    :: rv1 <= kd ->
        rn = 0; rf = 0;
        do
        :: rn < NG ->
            if
            :: g[rn] == rv1 -> rf = 1; g[rn] = rr + 1
            :: else
            fi;
            rn++
        :: else -> break
        od;
        rr = rr + rf; rv1++
    :: else -> break
    od;
    gmax = rr
#else
    skip
#endif
}

/* ----- the properties, checked at the end of every step ----- */

#define EST(i, j) (alive[i] && alive[j] && cur[CS(i, SL(j))] == (j) + 1 && cur[CS(j, SL(i))] == (i) + 1)

inline check() {
    /* S1: no link is up (both ends hold it) between two epochs; S3: a ready process is never linked to a newer one */
    ka = 0;
    do
    :: ka < NR ->
        kb = RLO(ka); kd = RHI(ka);
        assert(!EST(kb, kd) || g[kb] == g[kd]);                    /* S1 */
        assert(!(EST(kb, kd) && rd[kb]) || g[kd] <= g[kb]);        /* S3 */
        assert(!(EST(kb, kd) && rd[kd]) || g[kb] <= g[kd]);        /* S3 */
        ka++
    :: else -> break
    od;
    ka = 0;
    do
    :: ka < NP ->
        kb = 0;
        do
        :: kb < NP ->
            if
            :: rd[ka] && rd[kb] && g[ka] == g[kb] && ka < kb && VP(ka) != VP(kb) ->
                /* D (Lemma D, with or without zombies): two ready views of one generation that differ share no
                   process */
                ks = 0;
                do
                :: ks < N -> assert(VI(ka, ks) != VI(kb, ks)); ks++
                :: else -> break
                od;
                assert(zever)          /* S2 (runs without zombies): ready at once in one generation, one view */
            :: else
            fi;
            kb++
        :: else -> break
        od;
        /* S4 (runs without zombies): a process is never ready in a generation that was ready before it started */
        ks = 0;
        do
        :: ks < RG -> assert(zever || !rd[ka] || !((bf[ka] >> ks) & 1) || RGV(ks) != g[ka]); ks++
        :: else -> break
        od;
        /* R4, ready means agreement: a ready process's members have its view, or a message on its way (an end of
           stream, a differing VIEW) or its answer still to be read by the member will take it out of ready */
        if
        :: rd[ka] ->
            ks = 0;
            do
            :: ks < N ->
                if
                :: ks != SL(ka) ->
                    kd = cur[CS(ka, ks)] - 1; ke = END(ka, kd);
                    xf = (!alive[kd] || (g[kd] == g[ka] && VP(kd) == VP(ka)) || ph[ke ^ 1] == 2 || he[ke]);
                    rn = 0;
                    do
                    :: rn < vqn[ke] -> xf = xf || vq[ke * VQ + rn] % 512 != VP(ka); rn++
                    :: else -> break
                    od;
                    assert(xf)             /* R4 */
                :: else
                fi;
                ks++
            :: else -> break
            od
        :: else
        fi;
        /* auto: a member is the incarnation linked (the tables' holder is the member) */
        ks = 0;
        do
        :: ks < N ->
            assert(!AUTO || ks == SL(ka) || cur[CS(ka, ks)] == 0 || mem[CS(ka, ks)] == cinc[cur[CS(ka, ks)] - 1]);
            ks++
        :: else -> break
        od;
        ka++
    :: else -> break
    od;
    /* exits: a slot exits 75 at most once per fault (auto), per epoch the controller gave (fixed) */
    ka = 0;
    do
    :: ka < N -> assert(fences[ka] <= (AUTO -> faults : bumps)); ka++
    :: else -> break
    od
}

/* ALL_READY: every slot has its process, no zombie runs, all ready in one generation, each linked to the others'
   current processes */
inline goal() {
    allr = 1; ka = 0; xv = 0;
    do
    :: ka < N ->
        if
        :: curc[ka] == 0 -> allr = 0
        :: else -> xv = xv + cinc[curc[ka] - 1] * (ka == 0 -> 1 : (ka == 1 -> 8 : 64))
        fi;
        ka++
    :: else -> break
    od;
    ka = 0;
    do
    :: allr && ka < NP ->
        if
        :: alive[ka] && (zb[ka] || !rd[ka] || VP(ka) != xv || g[ka] != g[curc[0] - 1]) -> allr = 0
        :: else
        fi;
        ka++
    :: else -> break
    od;
    xv = 0
}

inline free_cells() {
    ka = 0;
    do
    :: ka < N ->
        freec[ka] = 0; kb = ka * CELLS;
        do
        :: kb < (ka + 1) * CELLS && freec[ka] == 0 ->
            if
            :: !alive[kb] ->
                xf = 1; kd = 0;
                do
                :: kd < NP ->
                    if
                    :: SL(kd) != ka -> ke = REC(kb, kd); xf = xf && IDLE(ke)
                    :: else
                    fi;
                    kd++
                :: else -> break
                od;
                if
                :: xf -> freec[ka] = kb + 1
                :: else
                fi
            :: else
            fi;
            kb++
        :: else -> break
        od;
        ka++
    :: else -> break
    od
}

/* the end of every step: generations renumbered, properties checked, derived variables, scratch zeroed (scratch
   is not hidden: a hidden variable is not restored when the search backtracks over a d_step) */
inline done() {
    forget_ready();
    renumber();
    check();
    goal();
    free_cells();
    xc = 0; xd = 0; xe = 0; xsl = 0; xi = 0; xg = 0; xrel = 0; xh = 0; xq = 0; xf = 0; xa = 0; xt = 0; xo = 0; xw = 0; xk = 0;
    cf = 0; sd = 0; se = 0; sa = 0; dl = 0; dd = 0; pm = 0; rn = 0; rv1 = 0; rr = 0; rf = 0;
    ka = 0; kb = 0; ks = 0; kd = 0; ke = 0; xv = 0
}

/* ----- the steps ----- */

/* a dial: both hellos go out at once (the listener's kernel accepts for it) */
inline dial(r) {
    kb = RLO(r); kd = RHI(r);
    ph[2 * (r)] = 1; ph[2 * (r) + 1] = 1; hh[2 * (r)] = 1; hh[2 * (r) + 1] = 1;
    HEP(2 * (r)) = g[kd]; HEP(2 * (r) + 1) = g[kb];
    printf("%d.%d - %d.%d: connection, hellos in gen %d and %d\n", SL(kb), cinc[kb], SL(kd), cinc[kd], g[kb], g[kd])
}

/* MeshModel.judge: xe's process reads the peer's hello and answers */
inline judge_step() {
    xc = ECELL(xe); xd = ECELL(xe ^ 1); xsl = SL(xd); xi = cinc[xd]; xg = HEP(xe);
    hh[xe] = 0;
    if
    :: xg < g[xc] -> xrel = REL_OLDER
    :: xg == g[xc] -> xrel = REL_EQUAL
    :: else -> xrel = REL_NEWER
    fi;
    xf = !mv[xe];
    if
    :: xf && ((sret[CS(xc, xsl)] >> xi) & 1) ->       /* Slot.retired: replaced on our link by a newer process */
        xa = ANS_RETIRED; xt = ACT_NONE
    :: else ->
#ifdef FIXED
        xh = HOLD_NONE; xq = 0;
#else
        if
        :: mem[CS(xc, xsl)] == 0 -> xh = HOLD_NONE
        :: mem[CS(xc, xsl)] == xi -> xh = HOLD_SAME
        :: else -> xh = HOLD_OTHER
        fi;
        xq = rd[xc];
        assert(!(xq && xh == HOLD_NONE));
#endif
        judge(AUTO, xrel, xh, xq, xf, xa, xt);
        if
        :: AUTO && xt == ACT_LINK ->
            assert(mem[CS(xc, xsl)] == 0 || mem[CS(xc, xsl)] == xi); mem[CS(xc, xsl)] = xi   /* write-once */
        :: else
        fi
    fi;
    printf("%d.%d judges the hello of %d.%d (gen %d, ours %d): answer %d, action %d\n",
        SL(xc), cinc[xc], xsl, xi, xg, g[xc], xa, xt);
    if
    :: ph[xe ^ 1] != 0 -> ha[xe ^ 1] = xa + 1
    :: else
    fi;
    act[xe] = xt;
    if
    :: xt == ACT_NONE -> close_end(xe)      /* nothing the peer answers can change anything */
    :: else -> ph[xe] = 2
    fi
}

/* Slot.offer and MeshModel._offer: an exchange both ends accepted becomes the link */
inline offer() {
    if
    :: (sret[CS(xc, xsl)] >> xi) & 1 -> close_end(xe)        /* RETIRED */
    :: else ->
        if
        :: cur[CS(xc, xsl)] != 0 ->       /* a new incarnation replaces the link: the old connection is failed */
            kd = cur[CS(xc, xsl)] - 1; ke = END(xc, kd); close_end(ke)
        :: else
        fi;
        if
        :: sinc[CS(xc, xsl)] != 0 && sinc[CS(xc, xsl)] != xi -> sret[CS(xc, xsl)] = sret[CS(xc, xsl)] | (1 << sinc[CS(xc, xsl)])
        :: else
        fi;
        sinc[CS(xc, xsl)] = xi; cur[CS(xc, xsl)] = xd + 1; ph[xe] = 3; act[xe] = 0; HEP(xe) = 0;
        vv[CS(xc, xsl)] = 0; vw[CS(xc, xsl)] = 0;
        printf("%d.%d: link to %d.%d up in gen %d\n", SL(xc), cinc[xc], xsl, xi, g[xc]);
        announce(xc); reeval(xc)
    fi
}

/* MeshModel.conclude: xe's process has the peer's answer xa (ANS_NONE: the connection ended first) */
inline conclude_step() {
    xc = ECELL(xe); xd = ECELL(xe ^ 1); xsl = SL(xd); xi = cinc[xd]; xg = HEP(xe); xt = act[xe];
    decide_conclusion(xt, xa, xo);
    printf("%d.%d concludes with %d.%d: answer %d -> outcome %d\n", SL(xc), cinc[xc], xsl, xi, xa, xo);
    if
    :: xo == OUT_NOTHING || mv[xe] -> close_end(xe)          /* nothing, or judged in a generation we left */
    :: else ->
        if
        :: AUTO && xo != OUT_LINK && rd[xc] && cinc[cur[CS(xc, xsl)] - 1] != xi ->
            close_end(xe)        /* R1's exception: a duplicate does not break up a ready mesh */
        :: else ->
            if
            :: xo == OUT_LINK -> offer()
            :: else ->
                if
                :: !AUTO -> xq = STAND_FIXED
                :: AUTO && sealed[xc] -> xq = STAND_SEALED
                :: else -> xq = STAND_OPEN
                fi;
                decide_move(xo, xq, xw);
                close_end(xe);
                if
                :: xw == MOVE_EXIT -> fence(xc)
                :: xw == MOVE_JOIN -> assert(xg > g[xc]); leave_generation(xc); g[xc] = xg;
                    printf("    %d.%d joins gen %d\n", SL(xc), cinc[xc], xg)
                :: xw == MOVE_MINT_ABOVE_PEER -> leave_generation(xc); g[xc] = 0; MFL = xg; mint(xc)
                :: xw == MOVE_MINT_ABOVE_OURS -> leave_generation(xc); MFL = g[xc]; g[xc] = 0; mint(xc)
                :: else -> assert(xw == MOVE_STAY)
                fi
            fi
        fi
    fi
}

/* MeshModel.view_received */
inline view_step() {
    xc = ECELL(xe); xd = ECELL(xe ^ 1); xsl = SL(xd);
    xv = vq[xe * VQ]; rn = 0;
    do
    :: rn + 1 < VQ -> vq[xe * VQ + rn] = vq[xe * VQ + rn + 1]; rn++
    :: else -> break
    od;
    vq[xe * VQ + VQ - 1] = 0; vqn[xe]--;
    if
    :: cur[CS(xc, xsl)] == xd + 1 ->
        vv[CS(xc, xsl)] = 1; vw[CS(xc, xsl)] = xv;
        printf("%d.%d gets VIEW %d from %d.%d\n", SL(xc), cinc[xc], xv, xsl, cinc[xd]);
        reeval(xc)
    :: else
    fi
}

/* the end of stream on a link: MeshModel.link_ended (an exchange that ends without an answer: CONCLUDE_STEPS) */
inline eof_step() {
    xc = ECELL(xe); xd = ECELL(xe ^ 1); xsl = SL(xd);
    if
    :: ph[xe] == 3 ->
        printf("%d.%d: link to %d.%d down (end of stream)\n", SL(xc), cinc[xc], xsl, cinc[xd]);
        link_down(xc, xsl, xd); close_end(xe)
    :: else -> close_end(xe)
    fi
}

/* the steps of one end: read the next frame in flight to it (a read that concludes may mint: one d_step per gap) */
/* the answer, or the end of stream instead of one (no answer: ANS_NONE) */
#define CONCLUDE_GUARD(e) (ph[e] == 2 && !hh[e] && (ha[e] != 0 || he[e]))
#define TAKE_ANSWER(e) xe = e; if :: ha[e] != 0 -> xa = ha[e] - 1; ha[e] = 0 :: else -> xa = ANS_NONE fi
#ifdef FIXED
#define CONCLUDE_STEPS(e) \
    :: d_step { CONCLUDE_GUARD(e) -> TAKE_ANSWER(e); conclude_step(); done() }
#else
#define CONCLUDE_AT(e, k) \
    :: d_step { CONCLUDE_GUARD(e) && GAP(k) -> xk = k; TAKE_ANSWER(e); conclude_step(); done() }
#define CONCLUDE_STEPS(e) KCHOICES(CONCLUDE_AT, e)
#endif
#define END_STEPS(e) \
    :: d_step { ph[e] == 1 && hh[e] -> xe = e; judge_step(); done() } \
    CONCLUDE_STEPS(e) \
    :: d_step { ph[e] == 3 && !hh[e] && ha[e] == 0 && vqn[e] > 0 -> xe = e; view_step(); done() } \
    :: d_step { ph[e] == 3 && he[e] && !hh[e] && ha[e] == 0 && vqn[e] == 0 -> xe = e; eof_step(); done() }

/* one end of a connection record (a pair of processes): its reads, and the dial (the retry loops of both
   processes: a process without a link to the peer's slot dials again as soon as its last exchange there is
   over). One proctype per end, so that weak fairness (-f) is per connection end: no retry loop, no other
   connection and no other frame can starve a read that stays possible. */
active [NE] proctype End() {
end_end:
    do
    :: d_step { IDLE(_pid / 2) && alive[RLO(_pid / 2)] && alive[RHI(_pid / 2)] &&
            (cur[CS(RLO(_pid / 2), SL(RHI(_pid / 2)))] == 0 || cur[CS(RHI(_pid / 2), SL(RLO(_pid / 2)))] == 0) ->
        dial(_pid / 2); done() }
    END_STEPS(_pid)
    od
}

/* ----- the orchestrator ----- */

inline birth(s) {
    xc = freec[s] - 1;
    binc[s]++; cinc[xc] = binc[s]; alive[xc] = 1; zb[xc] = 0; curc[s] = xc + 1;
    rn = 0; bf[xc] = 0;
    do
    :: rn < RG -> if :: RGV(rn) != 0 -> bf[xc] = bf[xc] | (1 << rn) :: else fi; rn++
    :: else -> break
    od;
#ifdef FIXED
    g[xc] = ctl;
    printf("orchestrator starts %d.%d in epoch %d\n", s, cinc[xc], ctl)
#else
    printf("orchestrator starts %d.%d\n", s, cinc[xc]);
    g[xc] = 0; MFL = 0; mint(xc)         /* a birth mints anywhere */
#endif
}

#define BIRTH_AT(s, k) \
    :: d_step { curc[s] == 0 && freec[s] != 0 && binc[s] < ICAP && GAP(k) -> xk = k; birth(s); done() }
#ifdef FIXED
#define BIRTH(s) BIRTH_AT(s, 0)
#else
#define BIRTH(s) KCHOICES(BIRTH_AT, s)
#endif

#define ZDIES(c) \
    :: d_step { alive[c] && zb[c] -> printf("zombie %d.%d dies\n", SL(c), cinc[c]); die(c, 0); done() }

/* it starts every slot whose process ended or was given up, in any order, interleaved with everything else; a
   zombie eventually dies */
active proctype Orchestrator() {
    d_step { done() };      /* the derived variables of the initial state */
end_orch:
    do
    BIRTH(0)
    BIRTH(1)
#if N > 2
    BIRTH(2)
#endif
#ifdef ZOMBIE
    ZDIES(0)
    ZDIES(1)
    ZDIES(2)
    ZDIES(3)
#if N > 2
    ZDIES(4)
    ZDIES(5)
#endif
#endif
    od
}

/* ----- faults: at most MAXF, at any moment ----- */

#ifdef ONEZOMBIE
#define ZOMBIE_ONE (!zever)
#else
#define ZOMBIE_ONE true
#endif
#ifdef ZSLOT
#define ZOMBIE_OK(c) (ZOMBIE_ONE && SL(c) == ZSLOT)
#else
#define ZOMBIE_OK(c) ZOMBIE_ONE
#endif
#ifdef KSLOT
#define KILL_OK(c) (SL(c) == KSLOT)
#else
#define KILL_OK(c) true
#endif

#define KILL(c) \
    :: d_step { faults < MAXF && alive[c] && !zb[c] && KILL_OK(c) -> \
        printf("KILL -9 %d.%d\n", SL(c), cinc[c]); faults++; die(c, 1); done() }

/* the orchestrator takes the process for dead and starts a replacement; the process runs on (a zombie) */
#define ZOMBIFY(c) \
    :: d_step { faults < MAXF && alive[c] && !zb[c] && ZOMBIE_OK(c) -> \
        printf("ZOMBIE %d.%d: the orchestrator replaces it, it runs on\n", SL(c), cinc[c]); \
        faults++; zb[c] = 1; zever = 1; curc[SL(c)] = 0; \
        if \
        :: !AUTO -> ctl++; bumps++ \
        :: else \
        fi; \
        done() }

/* one end of a link times out (a pause, a partition): link_ended, and it closes its end */
#define LOSE(e) \
    :: d_step { faults < MAXF && ph[e] == 3 -> \
        xe = e; xc = ECELL(xe); xd = ECELL(xe ^ 1); xsl = SL(xd); faults++; \
        printf("LOSS: %d.%d times out its link to %d.%d\n", SL(xc), cinc[xc], xsl, cinc[xd]); \
        link_down(xc, xsl, xd); close_end(xe); done() }

#if !defined(NOKILL) || defined(ZOMBIE)
#define PERCELL
#endif
#ifdef NOKILL
#define KILLC(c)
#else
#define KILLC(c) KILL(c)
#endif
#ifdef ZOMBIE
#define ZOMC(c) ZOMBIFY(c)
#else
#define ZOMC(c)
#endif
#ifdef NOLOSS
#define LOSEE(e)
#else
#define LOSEE(e) LOSE(e)
#endif

active proctype Faults() {
end_faults:
    do
    :: d_step { faults >= MAXF && false -> skip }
    KILLC(0) ZOMC(0)
    KILLC(1) ZOMC(1)
#if NP > 2
    KILLC(2) ZOMC(2)
#endif
#if NP > 3
    KILLC(3) ZOMC(3)
#endif
#if NP > 4
    KILLC(4) ZOMC(4)
    KILLC(5) ZOMC(5)
#endif
    LOSEE(0) LOSEE(1)
#if NE > 2
    LOSEE(2) LOSEE(3) LOSEE(4) LOSEE(5)
#endif
#if NE > 6
    LOSEE(6) LOSEE(7)
#endif
#if NE > 8
    LOSEE(8) LOSEE(9) LOSEE(10) LOSEE(11) LOSEE(12) LOSEE(13) LOSEE(14) LOSEE(15)
    LOSEE(16) LOSEE(17) LOSEE(18) LOSEE(19) LOSEE(20) LOSEE(21) LOSEE(22) LOSEE(23)
#endif
    od
}

/* after the last fault, eventually every slot's process is alive, ready in one generation with the others'
   current processes, no zombie runs, and it stays so (pan -a -N live; -f: weak fairness) */
ltl live { <>[] allr }

/* the safety runs (pan -N safety): no claim of their own; the properties are the assertions of every step */
never safety {
    do
    :: true
    od
}
