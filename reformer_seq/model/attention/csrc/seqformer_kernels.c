/*
 * Chunked (LSH / local) attention on the CPU: the compiled twin of the PyTorch reference in
 * reformer_seq/chunked_attention.py (Reformer, Kitaev et al., ICLR 2020, section 2).
 *
 * Same layout and rules as the reference: each round's sequence is in sorted order, a query
 * at sorted index sq of chunk c looks at the sorted indices of chunks c-back .. c+fwd, and sees
 * a key there iff it is in the same bucket and band_lo <= sq - sk <= band_hi (and, with
 * self_fallback, it is not the query itself). A pair's logit loses log N, N the number of
 * rounds whose window holds the pair (window keys u: lo <= u_q - u_k <= hi). Rounds merge by
 * log-sum-exp; a query that sees nothing in any round takes its own value.
 *
 * Unlike the dense reference, this works one chunk at a time with no (chunk x window)
 * temporaries: linear time and memory in L. Work goes one (round, g) at a time: keys, values
 * and window keys are first copied into the round's sorted order (so each window is contiguous
 * memory), then chunks run in parallel; each position is one query per round, so output rows
 * never collide. A query computes logits only over the span of slots its static band admits
 * (for causal LSH: the C slots before it, one 16-wide vector), and sums its output (or,
 * backward, its dq) over that span in registers. The backward then sums each window slot's key
 * and value gradients over the queries that see it, in registers, and adds them to the slot's
 * sorted-order row once per chunk, one residue class of chunks mod (back+1+fwd) at a time
 * (their windows are disjoint, so no two threads add into one row); it stores each query's dq
 * over its own gathered output-gradient row, then adds all three back at original positions.
 * Long rounds go in segments of queries (2^18 by default) with their look-back chunks, so the
 * sorted copies hold one segment at a time, not the whole round (a quarter of it at 1M tokens).
 * Threads: plain pthreads, so the library does not bring a second OpenMP runtime into a
 * process that already has torch's.
 *
 * With k == NULL the keys are the unit-normalised queries (shared-QK, section 2), computed on
 * the fly, and the key gradient is chained into dq (dk is then NULL too).
 *
 * Letters: B batch, H heads, G = B x H, L = padded length, D = head width, R = rounds,
 * C = chunk length. Tensors are float32 / int32, contiguous: q, k, v, out, dout, dq, dk, dv
 * (B, L, H, D) (the projections' own layout, so no transposes); lse (G, L);
 * perm (R, G, L) (NULL: identity), buckets (R, G, L), u (R, G, L) (NULL when R == 1);
 * row g = b * H + h.
 */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <sys/mman.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

typedef struct {
    const float *q, *k, *v;
    const int32_t *perm, *buckets, *u;
    int32_t *ut;       /* (G, L, R) u transposed: one cache line gives a position's window keys in every round */
    float *ld;         /* backward: (G, L, 2) lse and delta side by side */
    int64_t R, G, H, L, D, C, back, fwd, band_lo, band_hi, lo, hi;
    int64_t seg_rows;  /* queries per segment of a round's sorted order: the caller's, per call */
    int self_fallback;
    float scale;
    float logtab[256];
} layout_t;

/* ---------------------------------------------------------------- a minimal parallel for */
typedef void (*range_fn)(void *ctx, int64_t begin, int64_t end);
typedef struct { range_fn fn; void *ctx; int64_t begin, end; } job_t;

static void *run_job(void *arg) {
    job_t *j = (job_t *)arg;
    if (j->begin < j->end) j->fn(j->ctx, j->begin, j->end);
    return NULL;
}

/* Split [0, n) into n_threads contiguous ranges run in parallel (the caller runs the first). */
static void static_for(int64_t n, int n_threads, range_fn fn, void *ctx) {
    if (n_threads < 1) n_threads = 1;
    if (n_threads > 64) n_threads = 64;
    if (n_threads > n) n_threads = (int)(n > 0 ? n : 1);
    job_t jobs[64];
    pthread_t th[64];
    int started[64] = {0};
    for (int i = 0; i < n_threads; i++) {
        jobs[i].fn = fn;
        jobs[i].ctx = ctx;
        jobs[i].begin = n * i / n_threads;
        jobs[i].end = n * (i + 1) / n_threads;
    }
    for (int i = 1; i < n_threads; i++) started[i] = pthread_create(&th[i], NULL, run_job, &jobs[i]) == 0;
    run_job(&jobs[0]);
    for (int i = 1; i < n_threads; i++) {
        if (started[i]) pthread_join(th[i], NULL);
        else run_job(&jobs[i]);  /* no thread: run it here */
    }
}

/* Threads take blocks of `grain` indices from a shared counter as they finish, so that work of
 * uneven cost (chunks whose buckets differ in size) and a thread that the OS pauses do not leave
 * the other threads idle at the end. On a shared machine this matters: with another process on
 * one of two cores, a static split runs at the speed of the paused thread (measured: a 64K step
 * 2x slower while HF's was 1.3x slower). */
typedef struct { range_fn fn; void *ctx; int64_t n, grain; int64_t next; } dyn_t;

static void dyn_body(void *arg, int64_t begin, int64_t end) {
    (void)begin; (void)end;
    dyn_t *d = (dyn_t *)arg;
    for (;;) {
        const int64_t a = __atomic_fetch_add(&d->next, d->grain, __ATOMIC_RELAXED);
        if (a >= d->n) return;
        d->fn(d->ctx, a, a + d->grain < d->n ? a + d->grain : d->n);
    }
}

static void parallel_for_dynamic(int64_t n, int n_threads, int64_t grain, range_fn fn, void *ctx) {
    if (n_threads < 1) n_threads = 1;
    if (grain < 1) grain = 1;
    const int64_t blocks = (n + grain - 1) / grain;
    if (n_threads == 1 || blocks < 2) {
        fn(ctx, 0, n);
        return;
    }
    dyn_t d = {fn, ctx, n, grain, 0};
    static_for(n_threads < blocks ? n_threads : blocks, n_threads, dyn_body, &d);
}

/* [0, n) in about 4 blocks per thread, handed out as threads finish (finer blocks cost ~3% on
 * a quiet machine; these kept the median call 6-10% faster than a static split under load) */
static void parallel_for(int64_t n, int n_threads, range_fn fn, void *ctx) {
    const int64_t blocks = 4 * (int64_t)(n_threads > 0 ? n_threads : 1);
    parallel_for_dynamic(n, n_threads, (n + blocks - 1) / blocks, fn, ctx);
}

#define INLINE static inline __attribute__((always_inline))

/* Call IMPL(args..., D) with D a compile-time constant for the common head widths, so the
 * per-pair loops compile to a few vector instructions. */
#define DISPATCH_D(D, IMPL, ...)                                    \
    switch (D) {                                                    \
        case 8: IMPL(__VA_ARGS__, 8); break;                        \
        case 16: IMPL(__VA_ARGS__, 16); break;                      \
        case 32: IMPL(__VA_ARGS__, 32); break;                      \
        case 64: IMPL(__VA_ARGS__, 64); break;                      \
        default: IMPL(__VA_ARGS__, D); break;                       \
    }

/* 16- and 8-wide vectors (GCC/Clang vector extensions); loads and stores through memcpy need no
 * alignment. Rows of D floats (D a multiple of 8) go 16 at a time with an 8-wide tail, so a row
 * of 16 (the small config's head width) is one AVX-512 register. */
typedef float v8f __attribute__((vector_size(32)));
typedef float v16f __attribute__((vector_size(64)));
typedef int32_t v16i __attribute__((vector_size(64)));
INLINE v8f ld8(const float *p) { v8f v; memcpy(&v, p, sizeof(v)); return v; }
INLINE void st8(float *p, v8f v) { memcpy(p, &v, sizeof(v)); }
INLINE v16f ld16(const float *p) { v16f v; memcpy(&v, p, sizeof(v)); return v; }
INLINE v16i ld16i(const int32_t *p) { v16i v; memcpy(&v, p, sizeof(v)); return v; }
INLINE void st16(float *p, v16f v) { memcpy(p, &v, sizeof(v)); }
INLINE v8f splat8(float a) { return (v8f){a, a, a, a, a, a, a, a}; }
INLINE v16f splat(float a) { return (v16f){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
INLINE v16i splati(int32_t a) { return (v16i){a, a, a, a, a, a, a, a, a, a, a, a, a, a, a, a}; }
INLINE float hsum8(v8f v) { return ((v[0] + v[4]) + (v[1] + v[5])) + ((v[2] + v[6]) + (v[3] + v[7])); }
/* The low and high halves of a 16-wide vector. __builtin_shufflevector exists in clang and in GCC
 * from version 12; older GCC (11 is the default of Ubuntu 22.04) takes the halves through memcpy,
 * which compiles to the same extract instructions and gives the same bits. Defining
 * SEQFORMER_NO_SHUFFLEVECTOR forces that branch (the tests build both). */
#if (defined(__clang__) || (defined(__GNUC__) && __GNUC__ >= 12)) && !defined(SEQFORMER_NO_SHUFFLEVECTOR)
#define LO8(p) __builtin_shufflevector(p, p, 0, 1, 2, 3, 4, 5, 6, 7)
#define HI8(p) __builtin_shufflevector(p, p, 8, 9, 10, 11, 12, 13, 14, 15)
#else
INLINE v8f half8(const v16f p, const int hi) { v8f h; memcpy(&h, (const float *)&p + 8 * hi, sizeof(h)); return h; }
#define LO8(p) half8(p, 0)
#define HI8(p) half8(p, 1)
#endif

INLINE float dot(const float *a, const float *b, const int64_t D) {
    if (D % 8 == 0) {
        v8f acc = splat8(0.f);
        int64_t d = 0;
        for (; d + 16 <= D; d += 16) {
            const v16f p = ld16(a + d) * ld16(b + d);
            acc += LO8(p) + HI8(p);
        }
        if (d < D) acc += ld8(a + d) * ld8(b + d);
        return hsum8(acc);
    }
    float s = 0.f;
    for (int64_t d = 0; d < D; d++) s += a[d] * b[d];
    return s;
}

/* y += a * x over D floats */
INLINE void axpy(float *y, const float a, const float *x, const int64_t D) {
    if (D % 8 == 0) {
        int64_t d = 0;
        for (; d + 16 <= D; d += 16) st16(y + d, ld16(y + d) + splat(a) * ld16(x + d));
        if (d < D) st8(y + d, ld8(y + d) + splat8(a) * ld8(x + d));
        return;
    }
    for (int64_t d = 0; d < D; d++) y[d] += a * x[d];
}

/* A D-float accumulator held in registers (D a multiple of 8, at most 8 * MAXV): the per-slot
 * updates of one query's output or gradient row then never go through memory, where each
 * read-modify-write would wait on the previous store. */
#define MAXV 8
typedef struct { v16f a[MAXV / 2]; v8f tail; } acc_t;
INLINE int acc_ok(const int64_t D) { return D % 8 == 0 && D <= 8 * MAXV; }
INLINE void acc_zero(acc_t *acc, const int64_t D) {
    for (int64_t i = 0; i < D / 16; i++) acc->a[i] = splat(0.f);
    acc->tail = splat8(0.f);
}
INLINE void acc_axpy(acc_t *acc, const float a, const float *x, const int64_t D) {
    for (int64_t i = 0; i < D / 16; i++) acc->a[i] += splat(a) * ld16(x + 16 * i);
    if (D % 16) acc->tail += splat8(a) * ld8(x + D - 8);
}
INLINE void acc_store(float *y, const acc_t *acc, const float scale, const int64_t D) {
    for (int64_t i = 0; i < D / 16; i++) st16(y + 16 * i, acc->a[i] * splat(scale));
    if (D % 16) st8(y + D - 8, acc->tail * splat8(scale));
}
INLINE void acc_add_store(float *y, const acc_t *acc, const float scale, const int64_t D) {
    for (int64_t i = 0; i < D / 16; i++) st16(y + 16 * i, ld16(y + 16 * i) + acc->a[i] * splat(scale));
    if (D % 16) st8(y + D - 8, ld8(y + D - 8) + acc->tail * splat8(scale));
}

/* y = y * a + x * b over D floats */
INLINE void blend(float *y, const float a, const float *x, const float b, const int64_t D) {
    for (int64_t d = 0; d < D; d++) y[d] = y[d] * a + x[d] * b;
}

static int64_t window_len(const layout_t *t) { return (t->back + 1 + t->fwd) * t->C; }

#define PREFETCH 12  /* rows ahead to prefetch in gathers and scatters */
#define DYN_GRAIN 32  /* chunks a thread takes at a time in the attention loops */

/* offset of row (g, i) of a (B, L, H, D) tensor */
/* roff(t, g, i) = rbase(t, g) + i * H * D: loops over rows hoist the division out */
INLINE int64_t rbase(const layout_t *t, int64_t g) { return ((g / t->H) * t->L * t->H + g % t->H) * t->D; }
INLINE int64_t roff(const layout_t *t, int64_t g, int64_t i) {
    return (((g / t->H) * t->L + i) * t->H + g % t->H) * t->D;
}

static void init_layout(layout_t *t, const float *q, const float *k, const float *v, const int32_t *perm,
                        const int32_t *buckets, const int32_t *u, int64_t R, int64_t G, int64_t H, int64_t L,
                        int64_t D, int64_t C, int64_t back, int64_t fwd, int64_t band_lo, int64_t band_hi, int64_t lo,
                        int64_t hi, int self_fallback, float scale) {
    t->q = q; t->k = k; t->v = v; t->perm = perm; t->buckets = buckets; t->u = u;
    t->R = R; t->G = G; t->H = H; t->L = L; t->D = D; t->C = C; t->back = back; t->fwd = fwd;
    t->band_lo = band_lo; t->band_hi = band_hi; t->lo = lo; t->hi = hi;
    t->self_fallback = self_fallback; t->scale = scale;
    for (int i = 0; i < 256; i++) t->logtab[i] = logf((float)(i > 0 ? i : 1));
    t->ut = NULL;
    t->ld = NULL;
}

/* u (R, G, L) -> ut (G, L, R), in parallel over rows g * L + i */
static void transpose_u_range(void *arg, int64_t begin, int64_t end) {
    layout_t *t = (layout_t *)arg;
    const int64_t GL = t->G * t->L;
    for (int64_t gi = begin; gi < end; gi++)
        for (int64_t r = 0; r < t->R; r++) t->ut[gi * t->R + r] = t->u[r * GL + gi];
}

/* One (round, g) in sorted order. Queries, keys, values, the other rounds' window keys (and,
 * for the backward, the output gradients and softmax statistics) are first gathered into the
 * round's sorted order, so that every window is contiguous memory and the attention loop
 * touches nothing at random; results are written in sorted order too and scattered back to
 * original positions in a separate pass, whose independent random accesses overlap well. */
typedef struct {
    const layout_t *t;
    int64_t r, g;
    const int32_t *pm;                /* (L) sorted -> original position, NULL for identity */
    const int32_t *bk;                /* (L) buckets in sorted order */
    float *qs, *ks, *vs;              /* (L, D) gathered; ks only for given keys */
    float *invn;                      /* (L) shared-QK: 1 / |q| of each row (the key is q * invn) */
    int32_t *us;                      /* (R, L) other rounds' window keys, gathered */
    float *os, *ls;                   /* forward results (L, D), (L); backward: dout (L, D), lse (L) */
    float *dl;                        /* backward: delta (L) */
    float *dks, *dvs;                 /* backward key/value gradients in sorted order (L, D); dq goes
                                       * over os, row by row, as each query finishes */
    char *block;                      /* the buffers above, carved from one block */
    int owned;                        /* the block is the arena (else our own) */
    /* The sorted order is worked through in segments of at most seg_rows queries, so that the
     * buffers hold one segment's rows (plus its look-back chunks), not the whole round: at 1M
     * tokens that is ~0.3 GB less. The buffer pointers above are shifted so that they are
     * indexed by absolute sorted index s from lo on; the carved ones are kept here. */
    int64_t lo;                       /* first sorted row gathered (the segment's look-back) */
    int64_t q0;                       /* the segment's first query (a multiple of C) */
    int64_t nmax;                     /* rows a buffer holds; also the row stride of us (R, nmax) */
    float *qs0, *ks0, *vs0, *invn0, *os0, *ls0, *dl0, *dks0, *dvs0;
    int32_t *us0;
    const float *src_o;               /* backward: the output gradient, gathered into os */
} round_t;

/* copy one row of D floats */
INLINE void copy_row(float *dst, const float *src, const int64_t D) {
    if (D % 8 == 0) {
        int64_t d = 0;
        for (; d + 16 <= D; d += 16) st16(dst + d, ld16(src + d));
        if (d < D) st8(dst + d, ld8(src + d));
        return;
    }
    memcpy(dst, src, sizeof(float) * D);
}

/* Buffers of 2 MB and more are 2 MB-aligned and asked to live on transparent huge pages: the
 * gathers and scatters touch them at random, and 4 KB pages would miss the TLB on most rows. */
static void *alloc_bytes(size_t bytes) {
    const size_t huge = (size_t)2 << 20;
    if (bytes < huge) return malloc(bytes > 0 ? bytes : 1);
    void *p = NULL;
    if (posix_memalign(&p, huge, (bytes + huge - 1) / huge * huge) != 0) return NULL;
#ifdef MADV_HUGEPAGE
    madvise(p, (bytes + huge - 1) / huge * huge, MADV_HUGEPAGE);
#endif
    return p;
}

static float *alloc_f(int64_t n) { return (float *)alloc_bytes(sizeof(float) * (size_t)(n > 0 ? n : 1)); }

/* ---- one chunk's window, laid out for 16-wide vector work
 * A chunk's C queries see the K window slots starting at sorted index s0 = (ch - back) * C.
 * Per chunk we build the keys and values transposed (D, KP), the slots' buckets (-1 outside
 * [0, L)) and the other rounds' window keys. Query a of the chunk can only see the slots its
 * static band admits, j0[a] .. j0[a] + QW - 1 (QW a multiple of 16; for causal LSH, QW = C =
 * 16: one vector, half the window); its logits are D broadcast-multiply-adds of 16-wide
 * vectors over that span. KP has QW slots of zero slack past the window for those loads. */
INLINE v16f vsel(v16i m, v16f a, v16f b) { return (v16f)(((v16i)a & m) | ((v16i)b & ~m)); }
INLINE float hmax16(v16f v) {
#ifdef __AVX512F__
    return _mm512_reduce_max_ps((__m512)v);
#else
    float m = v[0];
    for (int i = 1; i < 16; i++) m = v[i] > m ? v[i] : m;
    return m;
#endif
}
INLINE float hsum16(v16f v) {
#ifdef __AVX512F__
    return _mm512_reduce_add_ps((__m512)v);
#else
    float s = 0.f;
    for (int i = 0; i < 16; i++) s += v[i];
    return s;
#endif
}

/* e^x, 16 lanes: x = n ln2 + r, |r| <= ln2/2, e^r by a degree-6 polynomial (relative error
 * < 2e-7); lanes below -87 (and -inf) give exactly 0. */
INLINE v16f vexp(v16f x) {
    const v16i tiny = x < splat(-87.0f);
    x = vsel(tiny, splat(-87.0f), x);
    const v16f t = x * splat(1.44269504088896341f) + splat(0.5f);
    v16f n = __builtin_convertvector(__builtin_convertvector(t, v16i), v16f);
    n = vsel(n > t, n - splat(1.0f), n);  /* floor(t): round to nearest of x / ln2 */
    const v16f r = x - n * splat(0.693145751953125f) - n * splat(1.42860682030941723212e-6f);
    v16f p = splat(1.0f / 720);
    p = p * r + splat(1.0f / 120);
    p = p * r + splat(1.0f / 24);
    p = p * r + splat(1.0f / 6);
    p = p * r + splat(0.5f);
    p = p * r + splat(1.0f);
    p = p * r + splat(1.0f);
    const v16i bits = (v16i)p + (__builtin_convertvector(n, v16i) << 23);
    return vsel(tiny, splat(0.0f), (v16f)bits);
}

/* log x, 16 lanes, for positive normal x: x = 2^e m with m in [sqrt(1/2), sqrt(2)), and
 * log m = 2 atanh(s), s = (m - 1) / (m + 1), |s| < 0.172, by its odd series to s^9 (truncation
 * below 1e-9; a few float roundings). */
INLINE v16f vlog(v16f x) {
    const v16i bits = (v16i)x;
    v16i e = ((bits >> 23) & splati(0xff)) - splati(127);
    v16f m = (v16f)((bits & splati(0x007fffff)) | splati(0x3f800000));
    const v16i big = m > splat(1.41421356f);
    m = vsel(big, m * splat(0.5f), m);
    e -= big;  /* true is -1 */
    const v16f s = (m - splat(1.f)) / (m + splat(1.f)), s2 = s * s;
    v16f p = splat(2.f / 9);
    p = p * s2 + splat(2.f / 7);
    p = p * s2 + splat(2.f / 5);
    p = p * s2 + splat(2.f / 3);
    p = p * s2 + splat(2.f);
    const v16f ef = __builtin_convertvector(e, v16f);
    return ef * splat(0.693145751953125f) + (s * p + ef * splat(1.42860682030941723212e-6f));
}

typedef struct {
    int64_t KP, QW, s0;
    int64_t *j0;           /* (C) first slot query a can see */
    float *kt, *vt;        /* (D, KP) transposed keys and values of the window (zeros outside) */
    int32_t *bw;           /* (KP) buckets of the window's slots, -1 outside [0, L) */
    int32_t *uw;           /* (R, KP) other rounds' window keys of the slots */
    int32_t *band;         /* (C, QW) -1 where the static band (and self rule) admits slot j0[a] + i */
    int64_t *alo, *ahi;    /* (K) the queries a whose span j0[a] .. j0[a] + QW - 1 holds slot k: alo..ahi */
    float *pm, *dsm;       /* backward: (C, QW) each query's probabilities and logit gradients */
    float *dqb, *cf;       /* backward: (C, D) the chunk's dq rows; (2C) coefficients of one slot */
    int diag;              /* j0[a] = j0[0] + a for every a */
} chunk_t;

/* does the static band (and the self rule) let query a of a chunk see window slot j? */
INLINE int band_ok(const layout_t *t, int64_t a, int64_t j) {
    const int64_t d = t->back * t->C + a - j;  /* s_q - s_k */
    return j >= 0 && j < window_len(t) && d >= t->band_lo && d <= t->band_hi && !(t->self_fallback && d == 0);
}

static void chunk_alloc(chunk_t *w, const layout_t *t) {
    const int64_t C = t->C, K = window_len(t);
    w->j0 = (int64_t *)malloc(sizeof(int64_t) * C);
    int64_t QW = 16;
    for (int64_t a = 0; a < C; a++) {
        int64_t lo = -1, hi = -1;
        for (int64_t j = 0; j < K; j++)
            if (band_ok(t, a, j)) {
                if (lo < 0) lo = j;
                hi = j;
            }
        w->j0[a] = lo < 0 ? 0 : lo;
        const int64_t span = lo < 0 ? 1 : hi - lo + 1;
        if ((span + 15) / 16 * 16 > QW) QW = (span + 15) / 16 * 16;
    }
    const int64_t KP = (K + 15) / 16 * 16 + QW;
    w->KP = KP;
    w->QW = QW;
    w->kt = (float *)calloc((size_t)(t->D * KP), sizeof(float));
    w->vt = (float *)calloc((size_t)(t->D * KP), sizeof(float));
    w->bw = (int32_t *)malloc(sizeof(int32_t) * KP);
    for (int64_t j = 0; j < KP; j++) w->bw[j] = -1;  /* the slack past the window stays invalid */
    w->uw = (int32_t *)calloc((size_t)((t->R > 1 ? t->R : 1) * KP), sizeof(int32_t));
    w->band = (int32_t *)malloc(sizeof(int32_t) * C * QW);
    for (int64_t a = 0; a < C; a++)
        for (int64_t i = 0; i < QW; i++) w->band[a * QW + i] = band_ok(t, a, w->j0[a] + i) ? -1 : 0;
    w->alo = (int64_t *)malloc(sizeof(int64_t) * K);
    w->ahi = (int64_t *)malloc(sizeof(int64_t) * K);
    for (int64_t k = 0; k < K; k++) {  /* j0 grows with a, so the queries are a contiguous range */
        w->alo[k] = C;
        w->ahi[k] = -1;
        for (int64_t a = 0; a < C; a++)
            if (w->j0[a] <= k && k < w->j0[a] + QW) {
                if (w->alo[k] == C) w->alo[k] = a;
                w->ahi[k] = a;
            }
    }
    w->diag = 1;
    for (int64_t a = 0; a < C; a++) w->diag &= w->j0[a] == w->j0[0] + a;
    w->pm = alloc_f(C * QW);
    w->dsm = alloc_f(C * QW);
    w->dqb = alloc_f(C * t->D);
    w->cf = alloc_f(2 * C);
}

static void chunk_free(chunk_t *w) {
    free(w->kt); free(w->vt); free(w->bw); free(w->uw); free(w->band); free(w->j0);
    free(w->alo); free(w->ahi); free(w->pm); free(w->dsm); free(w->dqb); free(w->cf);
}

/* dst (D) = scale * sum_i coef[i * cs] * rs[i] * rows[i * D] over n consecutive rows (rs NULL: 1),
 * or, with add, dst += that. Dense: the callers' coefficients are 0 where a pair is not visible,
 * which is cheaper than finding the visible ones (about 12 of 16 slots are, in a causal LSH
 * window). Two accumulators halve the FMA latency chain. */
INLINE void combo(float *dst, const float *coef, int64_t cs, const float *rs, const float *rows, int64_t n,
                  float scale, int add, const int64_t D) {
    if (acc_ok(D)) {
        acc_t a0, a1;
        acc_zero(&a0, D);
        acc_zero(&a1, D);
        int64_t i = 0;
        for (; i + 1 < n; i += 2) {
            acc_axpy(&a0, rs ? coef[i * cs] * rs[i] : coef[i * cs], rows + i * D, D);
            acc_axpy(&a1, rs ? coef[(i + 1) * cs] * rs[i + 1] : coef[(i + 1) * cs], rows + (i + 1) * D, D);
        }
        if (i < n) acc_axpy(&a0, rs ? coef[i * cs] * rs[i] : coef[i * cs], rows + i * D, D);
        for (int64_t b = 0; b < D / 16; b++) a0.a[b] += a1.a[b];
        a0.tail += a1.tail;
        if (add) acc_add_store(dst, &a0, scale, D);
        else acc_store(dst, &a0, scale, D);
        return;
    }
    if (!add) memset(dst, 0, sizeof(float) * D);
    for (int64_t i = 0; i < n; i++) axpy(dst, scale * (rs ? coef[i * cs] * rs[i] : coef[i * cs]), rows + i * D, D);
}

/* 1 / max(|x|, 1e-12), as F.normalize */
INLINE float inv_norm(const float *x, const int64_t D) {
    const float n = sqrtf(dot(x, x, D));
    return 1.f / (n > 1e-12f ? n : 1e-12f);
}

#ifdef __AVX512F__
/* dst[i * ldd + j] = src[j * lds + i] * (scale ? scale[j] : 1) for i, j < 16: a 16 x 16 block of
 * rows turned into columns with 64 shuffles (unpack, then 128-bit lane shuffles). */
INLINE void transpose16(const float *src, int64_t lds, const float *scale, float *dst, int64_t ldd) {
    __m512 r[16], t[16];
    for (int i = 0; i < 16; i++) {
        r[i] = _mm512_loadu_ps(src + lds * i);
        if (scale) r[i] = _mm512_mul_ps(r[i], _mm512_set1_ps(scale[i]));
    }
    for (int i = 0; i < 16; i += 2) {
        t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
    }
    for (int i = 0; i < 16; i += 4) {
        r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
    }
    for (int i = 0; i < 4; i++) {
        t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
        t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
        t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
        t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
    }
    for (int i = 0; i < 8; i++) {
        r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
        r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD);
    }
    for (int i = 0; i < 16; i++) _mm512_storeu_ps(dst + ldd * i, r[i]);
}
#define HAVE_TRANSPOSE16 1
#else
#define HAVE_TRANSPOSE16 0
INLINE void transpose16(const float *src, int64_t lds, const float *scale, float *dst, int64_t ldd) {
    (void)src; (void)lds; (void)scale; (void)dst; (void)ldd;
}
#endif

/* Fill the window of chunk ch from the round's sorted copies, 16 slots at a time: blocks that
 * lie inside [0, L) are transposed in registers (D a multiple of 16), the rest slot by slot. */
INLINE void chunk_load(chunk_t *w, const round_t *x, int64_t ch, int with_values, const int64_t D) {
    const layout_t *t = x->t;
    const int64_t L = t->L, KP = w->KP, K = window_len(t);
    const float *kbase = t->k ? x->ks : x->qs, *ksc = t->k ? NULL : x->invn;  /* shared-QK: q / |q| */
    w->s0 = (ch - t->back) * t->C;
    for (int64_t jb = 0; jb < K; jb += 16) {  /* slots K .. KP-1 keep their zeros and -1 buckets */
        const int64_t sb = w->s0 + jb;
        if (HAVE_TRANSPOSE16 && D % 16 == 0 && jb + 16 <= K && sb >= 0 && sb + 16 <= L) {
            for (int64_t db = 0; db < D; db += 16) {
                transpose16(kbase + sb * D + db, D, ksc ? ksc + sb : NULL, w->kt + db * KP + jb, KP);
                if (with_values) transpose16(x->vs + sb * D + db, D, NULL, w->vt + db * KP + jb, KP);
            }
            memcpy(w->bw + jb, x->bk + sb, sizeof(int32_t) * 16);
            if (t->R > 1)
                for (int64_t r2 = 0; r2 < t->R; r2++)
                    if (r2 != x->r) memcpy(w->uw + r2 * KP + jb, x->us + r2 * x->nmax + sb, sizeof(int32_t) * 16);
            continue;
        }
        for (int64_t j = jb; j < K && j < jb + 16; j++) {
            const int64_t sk = w->s0 + j;
            const int in = sk >= 0 && sk < L;
            w->bw[j] = in ? x->bk[sk] : -1;
            const float *krow = in ? kbase + sk * D : NULL;
            const float sc = (in && ksc) ? ksc[sk] : 1.f;
            for (int64_t d = 0; d < D; d++) {
                w->kt[d * KP + j] = in ? krow[d] * sc : 0.f;
                if (with_values) w->vt[d * KP + j] = in ? x->vs[sk * D + d] : 0.f;
            }
            if (t->R > 1)
                for (int64_t r2 = 0; r2 < t->R; r2++)
                    if (r2 != x->r) w->uw[r2 * KP + j] = in ? x->us[r2 * x->nmax + sk] : 0;
        }
    }
}

/* one past the last slot of query a's span (from sorted index base) inside both the window and [0, L) */
INLINE int64_t span_end(const chunk_t *w, const layout_t *t, int64_t a, int64_t base) {
    int64_t e = w->QW;
    if (window_len(t) - w->j0[a] < e) e = window_len(t) - w->j0[a];
    if (t->L - base < e) e = t->L - base;
    return e;
}

/* log N for 16 lanes of round counts N (1 <= N <= R) */
INLINE v16f log_count(const layout_t *t, v16i cnt) {
#ifdef __AVX512F__
    if (t->R < 16) return (v16f)_mm512_permutexvar_ps((__m512i)cnt, (__m512)ld16(t->logtab));  /* one lookup */
#endif
    v16f l = splat(0.f);
    for (int32_t c = 2; c <= t->R && c < 256; c++) l = vsel(cnt == splati(c), splat(t->logtab[c]), l);
    return l;
}

/* Masked, duplicate-corrected logits of query sq (slot a of its chunk) against window slots
 * j0[a] .. j0[a] + QW - 1, into row[QW] (-inf where invalid). Returns the row maximum. */
INLINE float chunk_logits(const chunk_t *w, const round_t *x, int64_t sq, int64_t a, float *row, const int64_t D) {
    const layout_t *t = x->t;
    const int64_t KP = w->KP, QW = w->QW, j0 = w->j0[a];
    const float *q = x->qs + sq * D;
    const v16i bq = splati(x->bk[sq]);
    v16f mx = splat(-INFINITY);
    for (int64_t i = 0; i < QW; i += 16) {
        const int64_t j = j0 + i;
        v16f acc = splat(0.f), acc2 = splat(0.f);  /* two chains: half the FMA latency */
        int64_t d = 0;
        for (; d + 1 < D; d += 2) {
            acc += splat(q[d]) * ld16(w->kt + d * KP + j);
            acc2 += splat(q[d + 1]) * ld16(w->kt + (d + 1) * KP + j);
        }
        if (d < D) acc += splat(q[d]) * ld16(w->kt + d * KP + j);
        acc = (acc + acc2) * splat(t->scale);
        v16i valid = (ld16i(w->bw + j) == bq) & ld16i(w->band + a * QW + i);
        if (t->R > 1) {  /* section 2: subtract log N, N = rounds whose window holds the pair */
            v16i cnt = splati(1);
            for (int64_t r2 = 0; r2 < t->R; r2++) {
                if (r2 == x->r) continue;
                const v16i du = splati(x->us[r2 * x->nmax + sq]) - ld16i(w->uw + r2 * KP + j);
                cnt -= (du >= splati((int32_t)t->lo)) & (du <= splati((int32_t)t->hi));  /* true is -1 */
            }
            acc -= log_count(t, cnt);
        }
        acc = vsel(valid, acc, splat(-INFINITY));
        st16(row + i, acc);
        mx = vsel(acc > mx, acc, mx);
    }
    return hmax16(mx);
}

/* ---- gathering into sorted order (parallel over positions) */
INLINE void gather_impl(round_t *x, int64_t begin, int64_t end, const int64_t D) {
    const layout_t *t = x->t;
    const int64_t L = t->L, g = x->g, rb = rbase(t, g), rs = t->H * D;
    for (int64_t s = begin; s < end; s++) {
        const int64_t i = x->pm ? x->pm[s] : s, gi = g * L + i, ro = rb + i * rs;
        if (x->pm && s + PREFETCH < end) {  /* random rows: ask for them early */
            const int64_t ahead = rb + x->pm[s + PREFETCH] * rs;
            __builtin_prefetch(t->q + ahead);
            if (t->k) __builtin_prefetch(t->k + ahead);
            __builtin_prefetch(t->v + ahead);
            if (t->R > 1) __builtin_prefetch(t->ut + (g * L + x->pm[s + PREFETCH]) * t->R);
            if (x->src_o) {
                __builtin_prefetch(x->src_o + ahead);
                __builtin_prefetch(t->ld + 2 * (g * L + x->pm[s + PREFETCH]));
            }
        }
        copy_row(x->qs + s * D, t->q + ro, D);
        if (t->k) copy_row(x->ks + s * D, t->k + ro, D);
        else x->invn[s] = inv_norm(x->qs + s * D, D);  /* shared-QK: the key is q / |q| */
        copy_row(x->vs + s * D, t->v + ro, D);
        if (t->R > 1) {
            const int32_t *up = t->ut + gi * t->R;
            for (int64_t r2 = 0; r2 < t->R; r2++)
                if (r2 != x->r) x->us[r2 * x->nmax + s] = up[r2];
        }
        if (x->src_o) {  /* backward: the output gradient and softmax statistics of the query */
            copy_row(x->os + s * D, x->src_o + ro, D);
            x->ls[s] = t->ld[2 * gi];
            x->dl[s] = t->ld[2 * gi + 1];
        }
    }
}

static void gather_range(void *arg, int64_t begin, int64_t end) {
    round_t *x = (round_t *)arg;
    begin += x->lo;
    end += x->lo;
    DISPATCH_D(x->t->D, gather_impl, x, begin, end)
    if (x->dks) {  /* backward: this range's key and value gradient rows start at zero */
        memset(x->dks + begin * x->t->D, 0, sizeof(float) * (size_t)((end - begin) * x->t->D));
        memset(x->dvs + begin * x->t->D, 0, sizeof(float) * (size_t)((end - begin) * x->t->D));
    }
}

static void point_round(round_t *x, int64_t lo);

/* Gather round r, row g, for the segment of queries [q0, q1) and the keys their windows reach. */
static void setup_round(round_t *x, int64_t r, int64_t g, int64_t q0, int64_t q1, int n_threads) {
    const layout_t *t = x->t;
    x->r = r;
    x->g = g;
    x->pm = t->perm ? t->perm + (r * t->G + g) * t->L : NULL;
    x->bk = t->buckets + (r * t->G + g) * t->L;
    x->q0 = q0;
    x->lo = q0 - t->back * t->C > 0 ? q0 - t->back * t->C : 0;
    const int64_t hi = q1 + t->fwd * t->C < t->L ? q1 + t->fwd * t->C : t->L;
    point_round(x, x->lo);
    parallel_for(hi - x->lo, n_threads, gather_range, x);
}

/* ---- the round buffers live in one block that is kept between calls (an arena): at long
 * inputs they are hundreds of MB per call, and a fresh mapping for each call would be faulted
 * in and zeroed by the kernel every time. A call that finds the arena in use (another thread)
 * takes a block of its own. seq_release_buffers() hands the arena back. */
static pthread_mutex_t arena_lock = PTHREAD_MUTEX_INITIALIZER;
static char *arena = NULL;
static size_t arena_cap = 0;

static char *arena_take(size_t bytes, int *owned) {
    if (pthread_mutex_trylock(&arena_lock) == 0) {
        if (arena_cap < bytes) {
            free(arena);
            arena = (char *)alloc_bytes(bytes);
            arena_cap = arena ? bytes : 0;
        }
        if (arena) {
            *owned = 1;
            return arena;
        }
        pthread_mutex_unlock(&arena_lock);
    }
    *owned = 0;
    return (char *)alloc_bytes(bytes);
}

static void arena_give(char *p, int owned) {
    if (owned) pthread_mutex_unlock(&arena_lock);
    else free(p);
}

void seq_release_buffers(void) {
    pthread_mutex_lock(&arena_lock);
    free(arena);
    arena = NULL;
    arena_cap = 0;
    pthread_mutex_unlock(&arena_lock);
}

/* carve n bytes (rounded up to 64) from *cur; with base NULL only count them */
static void *carve(char *base, size_t *cur, size_t n) {
    void *p = base ? base + *cur : NULL;
    *cur += (n + 63) / 64 * 64;
    return p;
}

/* queries per segment when the caller passes seg_rows <= 0; the execution policy's
 * kernel_segment_rows (reformer_seq/runtime/policy.py) is passed with every call, so two threads
 * with different policies never share it */
#define DEFAULT_SEG_ROWS ((int64_t)1 << 18)

/* queries per segment: a multiple of C; the whole round when windows look ahead (fwd > 0), since
 * a later segment's first store would then overwrite gradients added from an earlier one */
static int64_t segment_len(const layout_t *t) {
    const int64_t rows = t->seg_rows;
    if (t->fwd > 0 || t->L <= rows) return t->L;
    const int64_t s = rows / t->C * t->C;
    return s < t->C ? t->C : s;
}

/* p - n elements, as an address (the result is only indexed at n and beyond) */
#define SHIFT(p, n) ((__typeof__(p))((uintptr_t)(p) - (uintptr_t)(n) * sizeof(*(p))))

static size_t layout_round(round_t *x, char *base, int backward) {
    const layout_t *t = x->t;
    const int64_t span = segment_len(t) + (t->back + t->fwd) * t->C;
    x->nmax = span < t->L ? span : t->L;
    const size_t N = (size_t)x->nmax, D = (size_t)t->D, F = sizeof(float);
    size_t cur = 0;
    x->qs0 = (float *)carve(base, &cur, N * D * F);
    x->vs0 = (float *)carve(base, &cur, N * D * F);
    if (t->k) x->ks0 = (float *)carve(base, &cur, N * D * F);  /* given keys */
    else x->invn0 = (float *)carve(base, &cur, N * F);         /* shared-QK: 1 / |q| per row */
    x->os0 = (float *)carve(base, &cur, N * D * F);
    x->ls0 = (float *)carve(base, &cur, N * F);
    x->us0 = (int32_t *)carve(base, &cur, sizeof(int32_t) * N * (size_t)(t->R > 1 ? t->R : 1));
    if (backward) {
        x->dl0 = (float *)carve(base, &cur, N * F);
        x->dks0 = (float *)carve(base, &cur, N * D * F);
        x->dvs0 = (float *)carve(base, &cur, N * D * F);
    }
    return cur;
}

/* point the buffers at sorted rows [lo, ...) */
static void point_round(round_t *x, int64_t lo) {
    const int64_t D = x->t->D;
    x->qs = SHIFT(x->qs0, lo * D);
    x->vs = SHIFT(x->vs0, lo * D);
    x->ks = x->ks0 ? SHIFT(x->ks0, lo * D) : NULL;
    x->invn = x->invn0 ? SHIFT(x->invn0, lo) : NULL;
    x->os = SHIFT(x->os0, lo * D);
    x->ls = SHIFT(x->ls0, lo);
    x->us = SHIFT(x->us0, lo);
    x->dl = x->dl0 ? SHIFT(x->dl0, lo) : NULL;
    x->dks = x->dks0 ? SHIFT(x->dks0, lo * D) : NULL;
    x->dvs = x->dvs0 ? SHIFT(x->dvs0, lo * D) : NULL;
}

static void alloc_round(round_t *x, const layout_t *t, int backward) {
    memset(x, 0, sizeof(*x));
    x->t = t;
    const size_t bytes = layout_round(x, NULL, backward);
    x->block = arena_take(bytes, &x->owned);
    layout_round(x, x->block, backward);
}

static void free_round(round_t *x) {
    arena_give(x->block, x->owned);
}

/* ---------------------------------------------------------------- forward */
INLINE void fwd_impl(const round_t *x, int64_t begin, int64_t end, const int64_t D) {
    const layout_t *t = x->t;
    const int64_t C = t->C;
    chunk_t w;
    chunk_alloc(&w, t);
    const int64_t QW = w.QW, C16 = (C + 15) / 16 * 16;
    float *row = alloc_f(QW), *mx = alloc_f(2 * C16), *tot = mx + C16;
    for (int64_t a = C; a < C16; a++) mx[a] = 0.f, tot[a] = 1.f;  /* padding lanes */
    for (int64_t ch = x->q0 / C + begin; ch < x->q0 / C + end; ch++) {
        chunk_load(&w, x, ch, 0, D);
        for (int64_t a = 0; a < C; a++) {
            const int64_t sq = ch * C + a;
            float *orow = x->os + sq * D;
            memset(orow, 0, sizeof(float) * D);
            const float m = chunk_logits(&w, x, sq, a, row, D);
            mx[a] = m;
            tot[a] = 1.f;
            if (m == -INFINITY) continue;  /* nothing visible this round: lse = -inf + log 1 */
            v16f sum = splat(0.f);
            for (int64_t j = 0; j < QW; j += 16) {
                const v16f e = vexp(ld16(row + j) - splat(m));
                st16(row + j, e);
                sum += e;
            }
            const float total = hsum16(sum);
            tot[a] = total;
            /* the in-range slots of the query's span; the others have p = 0 */
            const int64_t base = w.s0 + w.j0[a];
            const int64_t ilo = base < 0 ? -base : 0, ihi = span_end(&w, t, a, base);
            combo(orow, row + ilo, 1, NULL, x->vs + (base + ilo) * D, ihi - ilo, 1.f / total, 0, D);
        }
        for (int64_t a = 0; a < C16; a += 16) {  /* the chunk's lse = m + log(total), 16 at a time */
            float l16[16];
            st16(l16, ld16(mx + a) + vlog(ld16(tot + a)));
            for (int64_t i = 0; i < 16 && a + i < C; i++) x->ls[ch * C + a + i] = l16[i];
        }
    }
    free(row);
    free(mx);
    chunk_free(&w);
}

static void fwd_range(void *arg, int64_t begin, int64_t end) {
    const round_t *x = (const round_t *)arg;
    DISPATCH_D(x->t->D, fwd_impl, x, begin, end)
}

/* ---- merge a round's sorted results into the original-order output by log-sum-exp weights */
typedef struct { const round_t *x; float *out, *lse; } merge_ctx;

static void merge_range(void *arg, int64_t begin, int64_t end) {
    const merge_ctx *c = (const merge_ctx *)arg;
    const round_t *x = c->x;
    const int64_t L = x->t->L, D = x->t->D, g = x->g, rb = rbase(x->t, g), rs = x->t->H * D;
    begin += x->q0;
    end += x->q0;
    for (int64_t s0 = begin; s0 < end; s0 += 16) {
        const int64_t n = end - s0 < 16 ? end - s0 : 16;
        float prev[16] = {0}, bl[16] = {0}, wt[16], inv[16], nl[16];
        int64_t pos[16];  /* original positions of the 16 rows */
        for (int64_t k = 0; k < n; k++) {
            const int64_t s = s0 + k;
            pos[k] = x->pm ? x->pm[s] : s;
            if (x->pm && s + PREFETCH < end) {
                __builtin_prefetch(c->out + rb + x->pm[s + PREFETCH] * rs, 1);
                if (x->r > 0) __builtin_prefetch(c->lse + g * L + x->pm[s + PREFETCH], 1);
            }
            prev[k] = x->r > 0 ? c->lse[g * L + pos[k]] : 0.f;  /* round 0 stores, reads nothing */
            bl[k] = x->ls[s];
        }
        if (x->r > 0) {
            /* one exp and one log per row: w = e^-|prev - blse| <= 1 weighs the smaller side, and
             * the merged lse is max + log1p(w) (log(1 + w) corrected for the rounding of 1 + w) */
            const v16f p = ld16(prev), b = ld16(bl);
            const v16f w = vexp(-(v16f)((v16i)(p - b) & splati(0x7fffffff)));
            const v16f u = splat(1.f) + w, iu = splat(1.f) / u;
            st16(wt, w);
            st16(inv, iu);
            st16(nl, vsel(p >= b, p, b) + (vlog(u) - ((u - splat(1.f)) - w) * iu));
        }
        for (int64_t k = 0; k < n; k++) {
            float *o = c->out + rb + pos[k] * rs, *l = c->lse + g * L + pos[k];
            const float *orow = x->os + (s0 + k) * D;
            if (x->r == 0 || prev[k] == -INFINITY) {
                copy_row(o, orow, D);
                *l = bl[k];
            } else if (bl[k] > -INFINITY) {
                if (prev[k] >= bl[k]) blend(o, inv[k], orow, wt[k] * inv[k], D);
                else blend(o, wt[k] * inv[k], orow, inv[k], D);
                *l = nl[k];
            }
        }
    }
}

typedef struct { const layout_t *t; float *out; const float *lse; const float *dout; float *dv; } self_ctx;

static void self_fwd_range(void *arg, int64_t begin, int64_t end) {
    const self_ctx *x = (const self_ctx *)arg;
    const int64_t D = x->t->D, L = x->t->L;
    for (int64_t gi = begin; gi < end; gi++)
        if (x->lse[gi] == -INFINITY) {
            const int64_t ro = roff(x->t, gi / L, gi % L);
            memcpy(x->out + ro, x->t->v + ro, sizeof(float) * D);
        }
}

void seq_attn_forward(const float *q, const float *k, const float *v, const int32_t *perm, const int32_t *buckets,
                      const int32_t *u, int64_t R, int64_t G, int64_t H, int64_t L, int64_t D, int64_t C,
                      int64_t back, int64_t fwd, int64_t band_lo, int64_t band_hi, int64_t lo, int64_t hi,
                      int self_fallback, float scale, float *out, float *lse, int n_threads, int64_t seg_rows) {
    layout_t t;
    init_layout(&t, q, k, v, perm, buckets, u, R, G, H, L, D, C, back, fwd, band_lo, band_hi, lo, hi, self_fallback,
                scale);
    t.seg_rows = seg_rows > 0 ? seg_rows : DEFAULT_SEG_ROWS;
    if (R > 1) {
        t.ut = (int32_t *)alloc_bytes(sizeof(int32_t) * G * L * R);
        parallel_for(G * L, n_threads, transpose_u_range, &t);
    }
    round_t x;
    alloc_round(&x, &t, 0);
    const int64_t seg = segment_len(&t);
    for (int64_t r = 0; r < R; r++) {
        for (int64_t g = 0; g < G; g++) {
            for (int64_t q0 = 0; q0 < L; q0 += seg) {
                const int64_t q1 = q0 + seg < L ? q0 + seg : L;
                setup_round(&x, r, g, q0, q1, n_threads);
                parallel_for((q1 - q0) / C, n_threads, fwd_range, &x);
                merge_ctx m = {&x, out, lse};
                parallel_for(q1 - q0, n_threads, merge_range, &m);
            }
        }
    }
    free_round(&x);
    free(t.ut);
    free(t.ld);
    if (self_fallback) {  /* nothing visible in any round: the query takes its own value */
        self_ctx sc = {&t, out, lse, NULL, NULL};
        parallel_for(G * L, n_threads, self_fwd_range, &sc);
    }
}

/* ---------------------------------------------------------------- backward */
typedef struct { const round_t *x; int64_t phase, P; float *dq; } bwd_ctx;

/* One chunk at a time: first each query's probabilities p and logit gradients ds over its span
 * (kept in pm, dsm) and its dq; then each window slot's key and value gradients, summed in
 * registers over the queries that see it and added to the slot's row once per chunk. */
INLINE void bwd_impl(const bwd_ctx *c, int64_t begin, int64_t end, const int64_t D) {
    const round_t *x = c->x;
    const layout_t *t = x->t;
    const int64_t C = t->C, P = c->P, L = t->L, K = window_len(t);
    chunk_t w;
    chunk_alloc(&w, t);
    const int64_t KP = w.KP, QW = w.QW;
    for (int64_t task = begin; task < end; task++) {
        const int64_t ch = x->q0 / C + c->phase + task * P;
        chunk_load(&w, x, ch, 1, D);
        for (int64_t a = 0; a < C; a++) {
            const int64_t sq = ch * C + a;
            const float lq = x->ls[sq];
            float *row = w.pm + a * QW, *ds = w.dsm + a * QW;
            if (lq == -INFINITY || chunk_logits(&w, x, sq, a, row, D) == -INFINITY) {
                memset(row, 0, sizeof(float) * QW);  /* no gradient from this query this round */
                memset(ds, 0, sizeof(float) * QW);
                memset(w.dqb + a * D, 0, sizeof(float) * D);
                continue;
            }
            const float *dorow = x->os + sq * D;
            const v16f dl = splat(x->dl[sq]);
            const float *vt = w.vt + w.j0[a];  /* the query's span of the transposed values */
            for (int64_t j = 0; j < QW; j += 16) {
                const v16f p = vexp(ld16(row + j) - splat(lq));
                v16f dp = splat(0.f), dp2 = splat(0.f);  /* dO . v for every slot (two chains) */
                int64_t d = 0;
                for (; d + 1 < D; d += 2) {
                    dp += splat(dorow[d]) * ld16(vt + d * KP + j);
                    dp2 += splat(dorow[d + 1]) * ld16(vt + (d + 1) * KP + j);
                }
                if (d < D) dp += splat(dorow[d]) * ld16(vt + d * KP + j);
                dp += dp2;
                st16(row + j, p);
                st16(ds + j, p * (dp - dl) * splat(t->scale));
            }
            /* dq = sum ds * k over the in-range slots (shared-QK: k = q / |q|) */
            const int64_t base = w.s0 + w.j0[a];
            const int64_t ilo = base < 0 ? -base : 0, ihi = span_end(&w, t, a, base);
            combo(w.dqb + a * D, ds + ilo, 1, t->k ? NULL : x->invn + base + ilo,
                  (t->k ? x->ks : x->qs) + (base + ilo) * D, ihi - ilo, 1.f, 0, D);
        }
        /* dv_k = sum_a p[a][k] dO_a, dk_k = sum_a ds[a][k] q_a over the queries a that see slot k */
        const float *dos = x->os + ch * C * D, *qs = x->qs + ch * C * D;
        for (int64_t k = 0; k < K; k++) {
            const int64_t sk = w.s0 + k, alo = w.alo[k], n = w.ahi[k] - alo + 1;
            if (sk < 0 || sk >= L || n <= 0) continue;
            const float *cp = w.pm + alo * QW + k - w.j0[alo], *cd = w.dsm + alo * QW + k - w.j0[alo];
            int64_t cs = QW - 1;  /* the spans move one slot per query (causal LSH): a fixed stride */
            if (!w.diag) {        /* otherwise: copy the coefficients out first */
                float *gp = w.cf, *gd = w.cf + C;
                for (int64_t i = 0; i < n; i++) {
                    const int64_t a = alo + i;
                    gp[i] = w.pm[a * QW + k - w.j0[a]];
                    gd[i] = w.dsm[a * QW + k - w.j0[a]];
                }
                cp = gp, cd = gd, cs = 1;
            }
            combo(x->dvs + sk * D, cp, cs, NULL, dos + alo * D, n, 1.f, 1, D);
            combo(x->dks + sk * D, cd, cs, NULL, qs + alo * D, n, 1.f, 1, D);
        }
        /* each query's dq goes over its output-gradient row, now read for the last time; the
         * scatter pass adds it at the original row */
        memcpy(x->os + ch * C * D, w.dqb, sizeof(float) * C * D);
    }
    chunk_free(&w);
}

static void bwd_range(void *arg, int64_t begin, int64_t end) {
    const bwd_ctx *c = (const bwd_ctx *)arg;
    DISPATCH_D(c->x->t->D, bwd_impl, c, begin, end)
}

/* ---- add sorted-order gradients back at original positions */
typedef struct { const round_t *x; float *dq, *dk, *dv; } scatter_ctx;

static void scatter_range(void *arg, int64_t begin, int64_t end) {
    const scatter_ctx *c = (const scatter_ctx *)arg;
    const round_t *x = c->x;
    const int64_t D = x->t->D, g = x->g, rb = rbase(x->t, g), rs = x->t->H * D;
    begin += x->lo;
    end += x->lo;
    for (int64_t s = begin; s < end; s++) {
        const int64_t ro = rb + (x->pm ? x->pm[s] : s) * rs;
        if (x->pm && s + PREFETCH < end) {
            const int64_t ahead = rb + x->pm[s + PREFETCH] * rs;
            __builtin_prefetch(c->dq + ahead, 1);
            if (c->dk) __builtin_prefetch(c->dk + ahead, 1);
            __builtin_prefetch(c->dv + ahead, 1);
        }
        if (s < x->q0) {  /* a look-back row of the previous segment, already stored: add its key
                           * and value gradients from this segment's first windows */
            axpy(c->dv + ro, 1.f, x->dvs + s * D, D);
            if (c->dk) axpy(c->dk + ro, 1.f, x->dks + s * D, D);
        } else if (x->r == 0) {  /* the first round stores: every position is visited once per round */
            copy_row(c->dv + ro, x->dvs + s * D, D);
            copy_row(c->dq + ro, x->os + s * D, D);
            if (c->dk) copy_row(c->dk + ro, x->dks + s * D, D);
        } else {
            axpy(c->dv + ro, 1.f, x->dvs + s * D, D);
            axpy(c->dq + ro, 1.f, x->os + s * D, D);  /* the query's dq (stored over its dout row) */
            if (c->dk) axpy(c->dk + ro, 1.f, x->dks + s * D, D);
        }
        if (!c->dk) {  /* keys are q / |q|: chain the key gradient into dq */
            const float *q = x->qs + s * D, *g = x->dks + s * D;
            const float n = sqrtf(dot(q, q, D));
            if (n > 1e-12f) {
                const float inv = 1.f / n, kg = dot(q, g, D) * inv;  /* k . g */
                for (int64_t d = 0; d < D; d++) c->dq[ro + d] += (g[d] - q[d] * inv * kg) * inv;
            } else {
                axpy(c->dq + ro, 1e12f, g, D);
            }
        }
    }
}

static void self_bwd_range(void *arg, int64_t begin, int64_t end) {
    const self_ctx *x = (const self_ctx *)arg;
    const int64_t D = x->t->D, L = x->t->L;
    for (int64_t gi = begin; gi < end; gi++)
        if (x->lse[gi] == -INFINITY) {
            const int64_t ro = roff(x->t, gi / L, gi % L);
            axpy(x->dv + ro, 1.f, x->dout + ro, D);
        }
}

/* ld (G, L, 2): each row's lse beside its delta = rowsum(dout * out) */
typedef struct { layout_t *t; const float *lse, *out, *dout; } ld_ctx;

static void ld_range(void *arg, int64_t begin, int64_t end) {
    const ld_ctx *c = (const ld_ctx *)arg;
    const layout_t *t = c->t;
    for (int64_t gi = begin; gi < end; gi++) {
        const int64_t ro = roff(t, gi / t->L, gi % t->L);
        t->ld[2 * gi] = c->lse[gi];
        t->ld[2 * gi + 1] = dot(c->dout + ro, c->out + ro, t->D);
    }
}

/* dq, dk, dv need no initialisation: round 0 visits every position of every g and stores. */
void seq_attn_backward(const float *q, const float *k, const float *v, const int32_t *perm, const int32_t *buckets,
                       const int32_t *u, int64_t R, int64_t G, int64_t H, int64_t L, int64_t D, int64_t C,
                       int64_t back, int64_t fwd, int64_t band_lo, int64_t band_hi, int64_t lo, int64_t hi,
                       int self_fallback, float scale, const float *lse, const float *out, const float *dout,
                       float *dq, float *dk, float *dv, int n_threads, int64_t seg_rows) {
    layout_t t;
    init_layout(&t, q, k, v, perm, buckets, u, R, G, H, L, D, C, back, fwd, band_lo, band_hi, lo, hi, self_fallback,
                scale);
    t.seg_rows = seg_rows > 0 ? seg_rows : DEFAULT_SEG_ROWS;
    const int64_t P = back + 1 + fwd, seg = segment_len(&t);
    if (R > 1) {
        t.ut = (int32_t *)alloc_bytes(sizeof(int32_t) * G * L * R);
        parallel_for(G * L, n_threads, transpose_u_range, &t);
    }
    t.ld = alloc_f(2 * G * L);
    ld_ctx lc = {&t, lse, out, dout};
    parallel_for(G * L, n_threads, ld_range, &lc);
    round_t x;
    alloc_round(&x, &t, 1);
    x.src_o = dout;
    for (int64_t r = 0; r < R; r++) {
        for (int64_t g = 0; g < G; g++) {
            for (int64_t q0 = 0; q0 < L; q0 += seg) {
                const int64_t q1 = q0 + seg < L ? q0 + seg : L, nc = (q1 - q0) / C;
                setup_round(&x, r, g, q0, q1, n_threads);
                for (int64_t phase = 0; phase < P && phase < nc; phase++) {  /* disjoint windows per phase */
                    bwd_ctx c = {&x, phase, P, dq};
                    parallel_for_dynamic((nc - phase + P - 1) / P, n_threads, DYN_GRAIN, bwd_range, &c);
                }
                scatter_ctx sc = {&x, dq, dk, dv};
                parallel_for(q1 - x.lo, n_threads, scatter_range, &sc);
            }
        }
    }
    free_round(&x);
    free(t.ut);
    free(t.ld);
    if (self_fallback) {
        self_ctx sc = {&t, NULL, lse, dout, dv};
        parallel_for(G * L, n_threads, self_bwd_range, &sc);
    }
}

/* ================================================================ LSH hashing and sorting
 * (the compiled twin of reformer_seq/lsh_attention.py's hash_codes and lsh_layout)
 *
 * lsh_codes: proj (n, F, R, half) float32 projections onto the random directions -> codes
 * (R, n) int64: per round, the concatenation over factors (most significant first) of the
 * argmax over [p; -p] (ties: the first index, as torch.argmax).
 */
typedef struct { const float *proj; int64_t n, F, R, half; int64_t *codes; } codes_ctx;

/* argmax over [p; -p] of h projections (ties: the first index) */
INLINE int64_t argmax_pm(const float *pf, const int64_t h) {
#ifdef __AVX__
    if (h == 4) {  /* the library's case (FACTOR 8): the 8 candidates in one register, no branches */
        const __m128 a = _mm_loadu_ps(pf);
        const __m256 c = _mm256_insertf128_ps(_mm256_castps128_ps256(a), _mm_sub_ps(_mm_setzero_ps(), a), 1);
        __m256 t = _mm256_max_ps(c, _mm256_permute2f128_ps(c, c, 1));
        t = _mm256_max_ps(t, _mm256_permute_ps(t, 0x4E));
        t = _mm256_max_ps(t, _mm256_permute_ps(t, 0xB1));  /* every lane: the maximum */
        const int m = _mm256_movemask_ps(_mm256_cmp_ps(c, t, _CMP_EQ_OQ));
        if (m) return __builtin_ctz((unsigned)m);
    }
#endif
    int64_t best = 0;
    float bv = pf[0];
    for (int64_t j = 1; j < 2 * h; j++) {
        const float vj = j < h ? pf[j] : -pf[j - h];
        if (vj > bv) { bv = vj; best = j; }
    }
    return best;
}

static void codes_range(void *arg, int64_t begin, int64_t end) {
    const codes_ctx *c = (const codes_ctx *)arg;
    const int64_t F = c->F, R = c->R, h = c->half, width = 2 * h;
    for (int64_t i = begin; i < end; i++) {
        const float *p = c->proj + i * F * R * h;
        for (int64_t r = 0; r < R; r++) {
            int64_t code = 0;
            for (int64_t f = 0; f < F; f++) code = code * width + argmax_pm(p + (f * R + r) * h, h);
            c->codes[r * c->n + i] = code;
        }
    }
}

void seq_lsh_codes(const float *proj, int64_t n, int64_t F, int64_t R, int64_t half, int64_t *codes, int n_threads) {
    codes_ctx c = {proj, n, F, R, half, codes};
    parallel_for(n, n_threads, codes_range, &c);
}

/* lsh_sort: buckets (R*G, L) int32 in original order (padding has buckets >= n_real_buckets[g],
 * one per position, increasing with position) -> perm (sorted index -> position), sorted
 * buckets, and window keys u in original order:
 *   causal:  u = s + (C + 1) * bucket        non-causal: u = s / C + 2 * bucket
 * A stable counting sort: linear in L. */
typedef struct {
    const int32_t *buckets; const int64_t *nb; int64_t G, L, C; int causal;
    int32_t *perm, *sorted, *u;
} sort_ctx;

static void sort_range(void *arg, int64_t begin, int64_t end) {
    const sort_ctx *c = (const sort_ctx *)arg;
    const int64_t L = c->L;
    for (int64_t row = begin; row < end; row++) {
        const int64_t g = row % c->G, nb = c->nb[g];
        const int32_t *b = c->buckets + row * L;
        int32_t *perm = c->perm + row * L, *sorted = c->sorted + row * L, *u = c->u + row * L;
        int64_t *start = (int64_t *)calloc((size_t)nb + 1, sizeof(int64_t));
        int64_t n_real = 0;
        for (int64_t i = 0; i < L; i++)
            if (b[i] < nb) { start[b[i] + 1]++; n_real++; }
        for (int64_t j = 0; j < nb; j++) start[j + 1] += start[j];
        int64_t pad = n_real;
        for (int64_t i = 0; i < L; i++) {
            const int64_t s = b[i] < nb ? start[b[i]]++ : pad++;  /* padding keeps position order */
            perm[s] = (int32_t)i;
            sorted[s] = b[i];
        }
        for (int64_t s = 0; s < L; s++) {
            const int64_t key = c->causal ? s + (c->C + 1) * (int64_t)sorted[s] : s / c->C + 2 * (int64_t)sorted[s];
            u[perm[s]] = (int32_t)key;
        }
        free(start);
    }
}

void seq_lsh_sort(const int32_t *buckets, const int64_t *n_real_buckets, int64_t R, int64_t G, int64_t L, int64_t C,
                  int causal, int32_t *perm, int32_t *sorted, int32_t *u, int n_threads) {
    sort_ctx c = {buckets, n_real_buckets, G, L, C, causal, perm, sorted, u};
    parallel_for(R * G, n_threads, sort_range, &c);
}
