/*
 * meshd's start-up and recovery protocol, 3 processes (slots 0..2), as a Promela model for spin.
 * How to run it and what each property means: README.md next to this file; scripts/check-model runs every check.
 *
 * Compile-time switches (spin -DNAME ...):
 *   FIXED        fixed epochs from a controller (--epoch E); default: self-minted generations (--epoch auto)
 *   BRIEF_RULES  the first design (commit 499a4a3): a process's membership is fixed only when it seals (first
 *                ready), and a link going down leaves the view unchanged; default: the rules of the code
 *                (docs/design.md R1-R6): write-once membership from the first link of each slot, views name only
 *                up links
 *   NOBUMP       with FIXED: a controller that restarts a dead process with the same epoch (breaks assumption A4)
 *   MAXF=n       faults in total (crash, pause, loss of one end of a link), after which none (default 2)
 *   SYM          symmetry reduction: every step ends by renaming the slots into a standard order (see canonical)
 *   NOLOSS       no link-loss faults
 *   NOPAUSE      no pauses
 *
 * Abstractions (the decision rules are the code's, the mechanics are coarse):
 * - A handshake between two running processes is one atomic step: both ends judge both hellos.
 * - A connection is reliable and FIFO until one end drops it (TCP): a VIEW frame is lost only with its connection.
 *   The frame queue of each direction holds 2 frames; a third send replaces the second (frames are built when they
 *   are sent, so the latest view always wins).
 * - Generations are abstracted by their order: gen[] holds the rank of each live process's generation (1 = oldest
 *   live one) and is renumbered after every change. A birth mints a generation at any position among the live ones
 *   (the wall clock may be anywhere); minting above g puts it at any position above g. Generations are unique
 *   (the 64-bit nonce), so a new one never equals a live one. No frame needs to carry a generation: an end of a
 *   connection exists only in the generation in which the connection was accepted (a generation change drops every
 *   link in the same step), so every VIEW that arrives is of the receiver's generation.
 * - Incarnations are numbered per slot: 1, 2, ... (the real ones are random 64-bit ids; only equality matters).
 *   Processes are named slot.incarnation in the printed trails (spin -t): 1.2 is the second process of slot 1;
 *   "gen" is the epoch (fixed), or the rank of the generation among the live ones at that moment (auto: ranks
 *   shift when generations appear or disappear).
 */

#define N 3
#define IX(p, q) ((p) * N + (q))                              /* p's end of the link to q */
#define CH(p, q) ((p) * 2 + (q) - ((q) > (p)))               /* frames from p to q */

#ifndef MAXF
#define MAXF 2
#endif

#ifdef FIXED
#define AUTO 0
#else
#define AUTO 1
#endif

/* per process */
bool alive[N];
bool paused[N];
byte inc[N];          /* current incarnation of each slot (0: never started) */
byte gen[N];          /* auto: rank of its generation among the live ones; fixed: the controller epoch */
bool sealed[N];       /* was ready in its generation (auto: R4, it fences instead of adopting; fixed: recorded only) */
byte rview[N * N];       /* ghost: rview[IX(p,s)], p's view when it first became ready (for S4) */
byte mem[N * N];      /* auto: mem[IX(p,s)], p's members: the incarnation of slot s admitted in p's generation */
byte fences[N];       /* exits 75 of each slot, all incarnations together */
bool crashed[N];      /* fixed: died (rather than fenced): the controller restarts it with a new epoch */

/* per link end */
bool up[N * N];       /* p's end of the link to q is installed */
byte linc[N * N];     /* the incarnation of q that p's end is linked to (BRIEF_RULES: the last one, kept when down) */
bool lvalid[N * N];   /* p has received a VIEW on its current link to q */
byte lview[N * N * N];/* lview[IX(p,q)*N+s]: that VIEW, slot by slot */
bool refd[N * N];     /* p's end of the link to q is installed but q refused p with SEALED: p reads it next */

chan vch[6] = [2] of { byte, byte, byte };   /* VIEW frames in flight, per direction */

byte faults;          /* faults injected so far */
byte crashes;         /* of which crashes */
byte ctl = 1;         /* fixed: the controller's current epoch */

/* READY(p), recomputed at the end of every step for the properties (a function of the state: no extra states) */
byte rdy[N];

/* scratch variables of a step; every step ends by zeroing them (they are not hidden: a hidden variable is not
   restored when the search backtracks over a d_step, and reading one there gives unreachable states) */
byte t0, t1, t2, u0, u1, u2, hi, hj, hk, hn, hr;
byte rk[N];

/* p's view, slot s (linc[IX(p,p)] stays 0) */
#define V(p, s) (linc[IX(p, s)] + ((s) == (p)) * inc[p])
#define LV(p, q, s) lview[IX(p, q) * N + (s)]
#define AGREES(p, q) (up[IX(p, q)] && lvalid[IX(p, q)] && \
        LV(p, q, 0) == V(p, 0) && LV(p, q, 1) == V(p, 1) && LV(p, q, 2) == V(p, 2))
/* R3: ready iff every link is up and the last VIEW on each equals our own view */
#define READY(p) (alive[p] && AGREES(p, ((p) + 1) % N) && AGREES(p, ((p) + 2) % N))

/* an established link: both ends installed, each naming the other's current incarnation */
#define EST(p, q) (alive[p] && alive[q] && up[IX(p, q)] && up[IX(q, p)] && \
        linc[IX(p, q)] == inc[q] && linc[IX(q, p)] == inc[p])
/* p's end of its link to q is dead: q died or restarted, closed its end, or is paused (p times out) */
#define BROKEN(p, q) (!alive[q] || inc[q] != linc[IX(p, q)] || !up[IX(q, p)] || paused[q])

#define SAMEVIEW(p, r) (V(p, 0) == V(r, 0) && V(p, 1) == V(r, 1) && V(p, 2) == V(r, 2))
#define S1(p, q) (!EST(p, q) || gen[p] == gen[q])
#define S2(p, r) (!(rdy[p] && rdy[r] && gen[p] == gen[r]) || SAMEVIEW(p, r))
#define S3(p, q) (!(rdy[p] && EST(p, q)) || gen[q] <= gen[p])
#define SAMESV(p, r) (rview[IX(p, 0)] == V(r, 0) && rview[IX(p, 1)] == V(r, 1) && rview[IX(p, 2)] == V(r, 2))
#define S4(p, r) (!(sealed[p] && rdy[r] && gen[p] == gen[r]) || SAMESV(p, r))
#define CURRENT(p) (V(p, 0) == inc[0] && V(p, 1) == inc[1] && V(p, 2) == inc[2])
/* exits: a slot exits (75) at most once per crash (pauses and link losses cost no exit) */
#define EXITS (fences[0] <= crashes && fences[1] <= crashes && fences[2] <= crashes)

/* the safety properties, as one invariant (ltl safety below): S5 and the impossibility of some refusals are
   assertions at the steps concerned */
#define INV (S1(0, 1) && S1(0, 2) && S1(1, 2) && \
        S2(0, 1) && S2(0, 2) && S2(1, 2) && \
        S3(0, 1) && S3(0, 2) && S3(1, 0) && S3(1, 2) && S3(2, 0) && S3(2, 1) && \
        S4(0, 0) && S4(0, 1) && S4(0, 2) && S4(1, 0) && S4(1, 1) && S4(1, 2) && S4(2, 0) && S4(2, 1) && S4(2, 2) && \
        EXITS)

/* the goal: all three alive, running, ready in one generation, each linked to the others' current incarnations */
#define ALL_READY (rdy[0] && rdy[1] && rdy[2] && !paused[0] && !paused[1] && !paused[2] && \
        gen[0] == gen[1] && gen[1] == gen[2] && CURRENT(0) && CURRENT(1) && CURRENT(2))

#ifdef BRIEF_RULES
#define KEEPV 1       /* the view keeps the incarnation last linked when a link goes down */
#else
#define KEEPV 0
#endif

#ifdef FIXED
#define ADMITS(p, q) true
#elif defined(BRIEF_RULES)
#define ADMITS(p, q) (!sealed[p] || mem[IX(p, q)] == inc[q])
#else
/* R1/R2: write-once membership */
#define ADMITS(p, q) (mem[IX(p, q)] == 0 || mem[IX(p, q)] == inc[q])
#endif

/* the end of every step: with -DSYM the slots renamed into the standard order (canonical), the derived rdy[],
   and the scratch variables zeroed */
inline done() {
#ifdef SYM
    c_code { canonical(); };
#endif
    rdy[0] = READY(0); rdy[1] = READY(1); rdy[2] = READY(2);
    t0 = 0; t1 = 0; t2 = 0; u0 = 0; u1 = 0; u2 = 0; hi = 0; hj = 0; hk = 0; hn = 0; hr = 0;
    rk[0] = 0; rk[1] = 0; rk[2] = 0
}

#ifdef SYM
/*
 * Symmetry reduction (-DSYM). No rule of the model depends on a slot's index (a handshake is judged the same from
 * both ends, faults and the orchestrator treat every slot alike, generations are ranks), so renaming the slots
 * maps runs to runs, and the properties (INV, ALL_READY) do not depend on the names. Every step therefore ends
 * by renaming the slots into a standard order (done()): sorted by a key of each slot's own state and a digest of
 * its links (ties keep their order, which costs reduction, not soundness). pan then stores one state for up to 6 renamings of it. Sound for the safety claim and for liveness
 * without fairness (-f ties fairness to the Node processes, which a renaming reassigns). Written in C, once:
 * pan undoes a d_step by restoring the whole state, so C code inside one is undone too. spin's simulator does not
 * run C code: replay a trail of a run without -DSYM.
 */
c_code {
#define SY_IX(p, q) ((p) * 3 + (q))
#define SY_CH(p, q) ((p) * 2 + (q) - ((q) > (p)))

static void
sy_keys(int x, int *k1, int *k2)
{	int y, s, n = 0;
	*k1 = (((((now.alive[x] * 2 + now.paused[x]) * 2 + now.sealed[x]) * 8 + now.gen[x]) * 16 + now.inc[x]) * 4
		+ now.fences[x]) * 2 + now.crashed[x];
	*k2 = 0;
	for (y = 0; y < 3; y++)
	{	n += now.up[SY_IX(x, y)] + 3 * now.lvalid[SY_IX(x, y)] + 9 * now.refd[SY_IX(x, y)] + 27 * now.up[SY_IX(y, x)];
		*k2 += now.linc[SY_IX(x, y)] + 7 * now.mem[SY_IX(x, y)] + 49 * now.lvalid[SY_IX(y, x)];
		for (s = 0; s < 3; s++)
			*k2 += 147 * now.lview[SY_IX(x, y) * 3 + s];
		if (y != x)
			*k2 += 4263 * q_len(now.vch[SY_CH(x, y)]);
	}
	*k1 = *k1 * 128 + n;
}

void
canonical(void)
{	int k1[3], k2[3], pm[3] = {0, 1, 2}, i, j, t, p, q, s, f, n;
	uchar o_slot[7][3], o_pair[6][9], o_lview[27], fr[6][2][3], nfr[6];

	for (i = 0; i < 3; i++)
		sy_keys(i, &k1[i], &k2[i]);
	for (i = 0; i < 3; i++)		/* sort slot numbers by key, stable */
	for (j = 0; j < 2; j++)
		if (k1[pm[j]] > k1[pm[j + 1]] || (k1[pm[j]] == k1[pm[j + 1]] && k2[pm[j]] > k2[pm[j + 1]]))
		{	t = pm[j]; pm[j] = pm[j + 1]; pm[j + 1] = t;
		}
	if (pm[0] == 0 && pm[1] == 1)
		return;			/* already in order */
	/* new slot i is old slot pm[i] */
	for (i = 0; i < 3; i++)
	{	o_slot[0][i] = now.alive[i]; o_slot[1][i] = now.paused[i]; o_slot[2][i] = now.inc[i];
		o_slot[3][i] = now.gen[i]; o_slot[4][i] = now.sealed[i]; o_slot[5][i] = now.fences[i];
		o_slot[6][i] = now.crashed[i];
	}
	for (i = 0; i < 3; i++)
	{	now.alive[i] = o_slot[0][pm[i]]; now.paused[i] = o_slot[1][pm[i]]; now.inc[i] = o_slot[2][pm[i]];
		now.gen[i] = o_slot[3][pm[i]]; now.sealed[i] = o_slot[4][pm[i]]; now.fences[i] = o_slot[5][pm[i]];
		now.crashed[i] = o_slot[6][pm[i]];
	}
	for (i = 0; i < 9; i++)
	{	o_pair[0][i] = now.up[i]; o_pair[1][i] = now.linc[i]; o_pair[2][i] = now.lvalid[i];
		o_pair[3][i] = now.refd[i]; o_pair[4][i] = now.mem[i]; o_pair[5][i] = now.rview[i];
	}
	for (i = 0; i < 27; i++)
		o_lview[i] = now.lview[i];
	for (p = 0; p < 3; p++)
	for (q = 0; q < 3; q++)
	{	i = SY_IX(p, q); j = SY_IX(pm[p], pm[q]);
		now.up[i] = o_pair[0][j]; now.linc[i] = o_pair[1][j]; now.lvalid[i] = o_pair[2][j];
		now.refd[i] = o_pair[3][j]; now.mem[i] = o_pair[4][j]; now.rview[i] = o_pair[5][j];
		for (s = 0; s < 3; s++)
			now.lview[i * 3 + s] = o_lview[j * 3 + pm[s]];
	}
	/* channels: empty all six (keeping their frames), refill each from its renamed source */
	for (i = 0; i < 6; i++)
	{	nfr[i] = q_len(now.vch[i]);
		for (n = 0; n < nfr[i]; n++)
			for (f = 0; f < 3; f++)
				fr[i][n][f] = qrecv(now.vch[i], 0, f, f == 2);
	}
	for (p = 0; p < 3; p++)
	for (q = 0; q < 3; q++)
	{	if (p == q)
			continue;
		i = SY_CH(p, q); j = SY_CH(pm[p], pm[q]);
		for (n = 0; n < nfr[j]; n++)
			qsend(now.vch[i], 0, fr[j][n][pm[0]], fr[j][n][pm[1]], fr[j][n][pm[2]], 3);
	}
}
}
#endif

inline flush(c) {
    do
    :: nempty(c) -> c?t0, t1, t2
    :: empty(c) -> break
    od
}

/* x sends its view to y on x's link to y; the frame is lost unless y's end of that connection is installed */
inline send_view(x, y) {
    if
    :: up[IX(y, x)] && linc[IX(y, x)] == inc[x] ->
        if
        :: nfull(vch[CH(x, y)]) -> vch[CH(x, y)]!V(x, 0), V(x, 1), V(x, 2)
        :: full(vch[CH(x, y)]) ->
            vch[CH(x, y)]?t0, t1, t2; vch[CH(x, y)]?u0, u1, u2;
            vch[CH(x, y)]!t0, t1, t2; vch[CH(x, y)]!V(x, 0), V(x, 1), V(x, 2)
        fi
    :: else
    fi
}

/* R3: x sends VIEW on all its up links */
inline broadcast(x) {
    hj = 0;
    do
    :: hj < N ->
        if
        :: hj != x && up[IX(x, hj)] -> send_view(x, hj)
        :: else
        fi;
        hj++
    :: else -> break
    od
}

inline clear_lview(x, y) {
    lvalid[IX(x, y)] = 0; LV(x, y, 0) = 0; LV(x, y, 1) = 0; LV(x, y, 2) = 0
}

/* R4: first ready in its generation -> sealed (and the ghost rview records the view it was ready with) */
inline reeval(x) {
    if
    :: !sealed[x] && READY(x) ->
        sealed[x] = 1;
        printf("    %d.%d READY in gen %d with view [%d %d %d]\n", x, inc[x], gen[x], V(x, 0), V(x, 1), V(x, 2));
        rview[IX(x, 0)] = V(x, 0); rview[IX(x, 1)] = V(x, 1); rview[IX(x, 2)] = V(x, 2);
#ifdef BRIEF_RULES
        mem[IX(x, 0)] = V(x, 0); mem[IX(x, 1)] = V(x, 1); mem[IX(x, 2)] = V(x, 2)
#else
        skip
#endif
    :: else
    fi
}

/* x's end of its link to y goes down (EOF, reset, silence) */
inline down(x, y) {
    printf("%d.%d: link to %d.%d down\n", x, inc[x], y, linc[IX(x, y)]);
    up[IX(x, y)] = 0; refd[IX(x, y)] = 0; clear_lview(x, y); flush(vch[CH(y, x)]);
#ifndef BRIEF_RULES
    linc[IX(x, y)] = 0;
    broadcast(x);    /* the view changed: this slot is 0 now */
#endif
    reeval(x)
}

/* x drops every link at once (its generation changed, or it exits); x's own frames in flight still arrive */
inline drop_all(x, keep) {
    hj = 0;
    do
    :: hj < N ->
        if
        :: hj != x ->
            if
            :: up[IX(x, hj)] -> up[IX(x, hj)] = 0; refd[IX(x, hj)] = 0; clear_lview(x, hj); flush(vch[CH(hj, x)])
            :: else
            fi;
            if
            :: !keep -> linc[IX(x, hj)] = 0
            :: else
            fi
        :: else
        fi;
        hj++
    :: else -> break
    od
}

inline reset_members(x) {
    mem[IX(x, 0)] = 0; mem[IX(x, 1)] = 0; mem[IX(x, 2)] = 0
}

/* auto: generations as ranks among the live processes, 1 = oldest; dead processes hold 0 */
inline renumber() {
#ifdef FIXED
    skip
#else
    hi = 0;
    do
    :: hi < N ->
        rk[hi] = 0;
        if
        :: alive[hi] ->
            rk[hi] = 1; hj = 0;
            do
            :: hj < N ->
                if
                :: alive[hj] && gen[hj] < gen[hi] ->
                    /* count each distinct smaller generation once: only at its first holder */
                    hk = 0;
                    do
                    :: hk < hj && !(alive[hk] && gen[hk] == gen[hj]) -> hk++
                    :: hk < hj && alive[hk] && gen[hk] == gen[hj] -> break
                    :: hk >= hj -> rk[hi]++; break
                    od
                :: else
                fi;
                hj++
            :: else -> break
            od
        :: else
        fi;
        hi++
    :: else -> break
    od;
    gen[0] = rk[0]; gen[1] = rk[1]; gen[2] = rk[2]
#endif
}

/* R5: x mints a new generation above lo (0: anywhere), unique among the live ones; x's old one is forgotten */
/* the highest generation (rank) among the others, 0 if none is alive */
#define MAXG(x) ((gen[((x) + 1) % N] >= gen[((x) + 2) % N]) * gen[((x) + 1) % N] + \
        (gen[((x) + 1) % N] < gen[((x) + 2) % N]) * gen[((x) + 2) % N])

/* x's new generation goes into the k-th gap above rank lo: above lo + k of the others' ranks and below the next
   one (k = 0: right above lo; k = MAXG(x) - lo: above every other). The choice of k is the guard of the step, so
   that every step of the model is one d_step. */
inline mint_at(x, lo, k) {
    gen[x] = 2 * (lo + k) + 1;       /* odd: a gap between the others, doubled below */
    hi = 0;
    do
    :: hi < N ->
        if
        :: hi != x && alive[hi] -> gen[hi] = gen[hi] * 2
        :: else
        fi;
        hi++
    :: else -> break
    od;
    renumber()
}

inline die(x) {
    drop_all(x, 0);
    alive[x] = 0; paused[x] = 0; sealed[x] = 0; reset_members(x); gen[x] = 0;
    rview[IX(x, 0)] = 0; rview[IX(x, 1)] = 0; rview[IX(x, 2)] = 0;
    renumber()
}

inline fence(x) {
    printf("    %d.%d FENCED: exits 75\n", x, inc[x]);
    fences[x]++;
    die(x)          /* exit 75; the orchestrator restarts the slot (Proc) */
}

/* x's generation is older than g's holder: adopt in place (auto, never ready) or fence */
inline older(x, y) {
#ifdef FIXED
    fence(x)
#else
    if
    :: sealed[x] -> fence(x)
    :: else ->
        assert(!sealed[x]);   /* S5: a process that was ready never moves to another generation in place */
        printf("    %d.%d adopts the newer generation of %d.%d, drops its links\n", x, inc[x], y, inc[y]);
        gen[x] = gen[y];
        reset_members(x);
        drop_all(x, KEEPV);
        renumber()
    fi
#endif
}

/* install x's end of a link to y (R2); true view change unless it is a reconnect of the same incarnation */
inline install(x, y) {
    hk = (up[IX(x, y)] && linc[IX(x, y)] == inc[y]);     /* reconnect of the same incarnation */
#ifdef BRIEF_RULES
    hk = hk || (linc[IX(x, y)] == inc[y]);                 /* the view keeps down links: no change */
#endif
    up[IX(x, y)] = 1; linc[IX(x, y)] = inc[y]; refd[IX(x, y)] = 0; clear_lview(x, y);
#ifndef FIXED
#ifndef BRIEF_RULES
    if
    :: mem[IX(x, y)] == 0 -> mem[IX(x, y)] = inc[y]     /* write-once */
    :: else
    fi
#endif
#endif
}

/* after install: the view goes out on the new link, and on every up link if it changed */
inline announce(x, y, same) {
    if
    :: same -> send_view(x, y)
    :: else -> broadcast(x)
    fi
}

/* R1: the hello exchange of p (dialing) and q (accepting), both judging both hellos */
inline handshake(p, q) {
    if
    :: gen[p] == gen[q] ->
        if
        :: ADMITS(p, q) && ADMITS(q, p) ->
            flush(vch[CH(p, q)]); flush(vch[CH(q, p)]);
            printf("%d.%d - %d.%d: link up in gen %d\n", p, inc[p], q, inc[q], gen[p]);
            install(p, q); hn = hk; install(q, p);
            announce(p, q, hn); announce(q, p, hk);
            reeval(p); reeval(q)
        :: !ADMITS(p, q) && !ADMITS(q, p) ->
            assert(false)     /* both refuse with SEALED: impossible with one live process per slot */
        :: !ADMITS(p, q) && ADMITS(q, p) ->
            /* p refuses q (SEALED); q accepted p's hello, installs its end, and reads the refusal next */
            assert(!sealed[q]);
            printf("%d.%d refuses %d.%d: SEALED\n", p, inc[p], q, inc[q]);
            flush(vch[CH(p, q)]);
            install(q, p); refd[IX(q, p)] = 1; announce(q, p, hk)
        :: ADMITS(p, q) && !ADMITS(q, p) ->
            assert(!sealed[p]);
            printf("%d.%d refuses %d.%d: SEALED\n", q, inc[q], p, inc[p]);
            flush(vch[CH(q, p)]);
            install(p, q); refd[IX(p, q)] = 1; announce(p, q, hk)
        fi
    :: gen[p] < gen[q] -> older(p, q)     /* q refuses p (STALE); p adopts or fences */
    :: gen[p] > gen[q] -> older(q, p)
    fi
}

inline birth(x) {
    alive[x] = 1; inc[x]++; sealed[x] = 0; reset_members(x);
    printf("orchestrator starts %d.%d\n", x, inc[x]);
#ifdef FIXED
    if
#ifdef NOBUMP
    :: crashed[x] -> crashed[x] = 0           /* assumption A4 broken: the replacement gets the same epoch */
#else
    :: crashed[x] -> ctl++; crashed[x] = 0    /* R6: a death gets a new epoch */
#endif
    :: else
    fi;
    gen[x] = ctl
#else
    skip                  /* the step mints the generation: mint_at */
#endif
}

/* R5: a SEALED refusal makes an unsealed process mint a generation above its own (in the gap k above it) and
   drop every link */
#define REFUSED_STEP(p, q, k, fits) \
    :: d_step { alive[p] && !paused[p] && refd[IX(p, q)] && (fits) -> \
        assert(!sealed[p]); /* S5, and a sealed process is never refused with SEALED */ \
        printf("%d.%d reads SEALED: mints a generation above gen %d, drops its links\n", p, inc[p], gen[p]); \
        drop_all(p, KEEPV); reset_members(p); mint_at(p, gen[p], k); \
        printf("    %d.%d is in gen %d\n", p, inc[p], gen[p]); done() }

/* one end of p's link to q: dial and handshake while down, detect a dead link, read VIEW and REFUSE frames */
#define LINK_STEPS(p, q) \
    :: d_step { alive[p] && !paused[p] && alive[q] && !paused[q] && !up[IX(p, q)] && !refd[IX(q, p)] -> \
        handshake(p, q); done() } \
    :: d_step { alive[p] && !paused[p] && up[IX(p, q)] && !refd[IX(p, q)] && BROKEN(p, q) -> \
        down(p, q); done() } \
    :: d_step { alive[p] && !paused[p] && up[IX(p, q)] && nempty(vch[CH(q, p)]) -> \
        vch[CH(q, p)]?LV(p, q, 0), LV(p, q, 1), LV(p, q, 2); lvalid[IX(p, q)] = 1; \
        printf("%d.%d gets VIEW [%d %d %d] from %d.%d\n", p, inc[p], LV(p, q, 0), LV(p, q, 1), LV(p, q, 2), q, linc[IX(p, q)]); \
        reeval(p); done() } \
    REFUSED_STEP(p, q, 0, true) \
    REFUSED_STEP(p, q, 1, gen[p] + 1 <= MAXG(p))

/* the steps of the process in slot p (weak fairness is per proctype instance: a process that can step
   eventually does); declared first, so the three instances are _pid 0, 1, 2 */
active [N] proctype Node() {
end_node:
    do
    LINK_STEPS(_pid, (_pid + 1) % N)
    LINK_STEPS(_pid, (_pid + 2) % N)
    od
}

#ifdef FIXED
#define BIRTH_STEP(x) \
    :: d_step { !alive[x] -> birth(x); printf("    %d.%d is in gen %d\n", x, inc[x], gen[x]); done() }
#else
/* a birth mints a generation anywhere among the others' (gap k: above k of their ranks) */
#define BIRTH_AT(x, k, fits) \
    :: d_step { !alive[x] && (fits) -> birth(x); mint_at(x, 0, k); \
        printf("    %d.%d is in gen %d\n", x, inc[x], gen[x]); done() }
#define BIRTH_STEP(x) \
    BIRTH_AT(x, 0, true) \
    BIRTH_AT(x, 1, 1 <= MAXG(x)) \
    BIRTH_AT(x, 2, 2 <= MAXG(x))
#endif

/* all three slots start empty: the orchestrator starts them in any order, interleaved with everything else;
   it restarts a slot whose process exited, and eventually resumes a paused one */
#define ORCH_STEPS(x) \
    BIRTH_STEP(x) \
    :: d_step { paused[x] -> paused[x] = 0; printf("SIGCONT %d.%d\n", x, inc[x]); done() }

active proctype Orchestrator() {
end_orch:
    do
    ORCH_STEPS(0)
    ORCH_STEPS(1)
    ORCH_STEPS(2)
    od
}

inline crash(x) {
    printf("KILL -9 %d.%d\n", x, inc[x]);
    faults++; crashes++; crashed[x] = 1; die(x)
}

inline pause(x) {
    printf("SIGSTOP %d.%d\n", x, inc[x]);
    faults++; paused[x] = 1
}

inline lose(x, y) {
    printf("LOSS: %d.%d times out its link to %d.%d\n", x, inc[x], y, linc[IX(x, y)]);
    faults++; down(x, y)
}

/* at most MAXF faults, at any time, then none */
active proctype Faults() {
end_faults:
    do
    :: d_step { faults < MAXF && alive[0] -> crash(0); done() }
    :: d_step { faults < MAXF && alive[1] -> crash(1); done() }
    :: d_step { faults < MAXF && alive[2] -> crash(2); done() }
#ifndef NOPAUSE
    :: d_step { faults < MAXF && alive[0] && !paused[0] -> pause(0); done() }
    :: d_step { faults < MAXF && alive[1] && !paused[1] -> pause(1); done() }
    :: d_step { faults < MAXF && alive[2] && !paused[2] -> pause(2); done() }
#endif
#ifndef NOLOSS
    :: d_step { faults < MAXF && alive[0] && !paused[0] && up[IX(0, 1)] -> lose(0, 1); done() }
    :: d_step { faults < MAXF && alive[0] && !paused[0] && up[IX(0, 2)] -> lose(0, 2); done() }
    :: d_step { faults < MAXF && alive[1] && !paused[1] && up[IX(1, 0)] -> lose(1, 0); done() }
    :: d_step { faults < MAXF && alive[1] && !paused[1] && up[IX(1, 2)] -> lose(1, 2); done() }
    :: d_step { faults < MAXF && alive[2] && !paused[2] && up[IX(2, 0)] -> lose(2, 0); done() }
    :: d_step { faults < MAXF && alive[2] && !paused[2] && up[IX(2, 1)] -> lose(2, 1); done() }
#endif
    :: break
    od
}


/* S1-S4 and the exit bound hold in every reachable state (pan -N safety, without -a): a claim that asserts the
   invariant after every step (written as a never claim: spin's LTL translator does not take an expression this
   long) */
never safety {
    do
    :: assert(INV)
    od
}

/* after the last fault, eventually all three are ready in one generation, linked to each other's current
   incarnations, and stay so (pan -a -N live) */
ltl live { <>[] ALL_READY }
