/* geoptim's fused CPU kernels (loaded by geoptim/_compiled.py, which documents them).

   Every update rule is written once, in the compute type C, as the body of one macro of
   KERNELS below; KERNELS is instantiated for each storage type S:

       storage   S          compute C   load / store
       f32       float      float       identity
       f64       double     double      identity
       bf16      uint16_t   float       exact widening / round to nearest even (NaN: 0x7fc0)
       f16       _Float16   float       exact widening / round to nearest even

   so a 16-bit tensor is read once, computed in float32 exactly as the float32 kernel computes
   it, and stored rounded once. Tensors are flat arrays: the caller passes only tensors whose
   elements are dense in memory, with equal strides in one row (any dense layout).

   Kernels that reduce (per-tensor sums, for the statistics of normalised updates) accumulate
   in double, 8 lanes per block of BLOCK elements and block sums added in order, into the
   `sums` array (three doubles per tensor), summed over threads in thread order. */

#include <math.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#ifdef GEOPTIM_MVEC /* vectorised double pow from glibc's libmvec */
__attribute__((__simd__("notinbranch"))) double pow(double, double);
#endif

/* ---------------------------------------------------------------- storage types */

typedef uint16_t bf16;
static inline float load_bf16(bf16 x) {
    uint32_t bits = (uint32_t)x << 16;
    float f;
    memcpy(&f, &bits, 4);
    return f;
}
static inline bf16 store_bf16(float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;
    return f != f ? (bf16)0x7fc0 : (bf16)rounded;
}

#ifdef __FLT16_MAX__
const int geoptim_has_f16 = 1;
typedef _Float16 f16;
static inline float load_f16(f16 x) { return (float)x; }
static inline f16 store_f16(float f) { return (f16)f; }
#else /* no _Float16 in this compiler: the f16 kernels exist but are never called */
const int geoptim_has_f16 = 0;
typedef uint16_t f16;
static inline float load_f16(f16 x) { return (float)x * 0; }
static inline f16 store_f16(float f) { return (f16)(f * 0); }
#endif

static inline float load_f32(float x) { return x; }
static inline float store_f32(float x) { return x; }
static inline double load_f64(double x) { return x; }
static inline double store_f64(double x) { return x; }

/* ---------------------------------------------------------------- the float l_p power */

/* x^y for float x and y < 0, as 2^(y log2 x) evaluated in double: log x = e ln 2 + 2 atanh(f)
   with f = (m - 1)/(m + 1), |f| <= 0.172, series to f^9 (error < 1e-9); exp(t) = 2^k exp(r),
   |r| <= ln(2)/2, Taylor to r^8 (relative error < 2e-10); so the double result is within
   1.2e-9 of x^y (|y| <= 1) and its rounding to float within 0.5 ulp + 0.02 ulp. x = 0, inf,
   NaN: exact (inf, 0, NaN). Branch-free, so it vectorises; glibc's powf does not, and
   libmvec's is slower. */
static inline float powf_neg(float xf, float yf) {
    double x = xf, y = yf;
    uint64_t bits;
    memcpy(&bits, &x, 8);
    uint64_t eb = ((bits >> 52) & 0x7ff) | 0x4330000000000000ULL; /* 2^52 + biased exponent */
    double e;
    memcpy(&e, &eb, 8);
    e -= 0x1p52 + 1023;
    bits = (bits & 0x000fffffffffffffULL) | 0x3ff0000000000000ULL;
    double m;
    memcpy(&m, &bits, 8);
    int big = m > 1.4142135623730951;
    m = big ? m * 0.5 : m;
    e = big ? e + 1 : e;
    double f = (m - 1) / (m + 1), f2 = f * f;
    double s = f * (2 + f2 * (2 / 3. + f2 * (2 / 5. + f2 * (2 / 7. + f2 * (2 / 9.)))));
    const double ln2 = 0.6931471805599453;
    double t = y * (e * ln2 + s);
    double kd = t * 1.4426950408889634 + 0x1.8p52; /* k = round(t / ln 2) in the low bits */
    uint64_t kb;
    memcpy(&kb, &kd, 8);
    double r = t - (kd - 0x1.8p52) * ln2;
    double p = 1 + r * (1 + r * (1 / 2. + r * (1 / 6. + r * (1 / 24. + r * (1 / 120.
             + r * (1 / 720. + r * (1 / 5040. + r * (1 / 40320.))))))));
    uint64_t sb = (kb + 1023) << 52;
    double scale;
    memcpy(&scale, &sb, 8);
    float result = (float)(p * scale);
    result = xf == 0 ? INFINITY : result;
    result = xf == INFINITY ? 0.0f : result;
    return xf != xf ? xf : result;
}

/* ---------------------------------------------------------------- calls and threads */

/* One call: nt tensors; ptr[k*nt + t] is list k's tensor t; gs the group's scalars;
   ts[k*nt + t] the k-th per-tensor scalar; flags select a variant; sums (or null) three
   doubles per tensor that reducing kernels add to. */
typedef struct {
    int64_t nt;
    const int64_t *numel;
    void *const *ptr;
    const double *gs;
    const double *ts;
    int64_t flags;
    double *sums;
} args_t;

#define NSUMS 3
typedef void (*body_t)(const args_t *, int64_t t, int64_t lo, int64_t hi, double *acc);
typedef struct {
    const args_t *a;
    body_t body;
    int64_t begin, end;
    double *sums; /* this job's NSUMS per tensor, or null */
} job_t;

/* Elements [begin, end) of the tensors laid end to end. */
static void run_range(const job_t *j) {
    int64_t offset = 0;
    for (int64_t t = 0; t < j->a->nt && offset < j->end; t++) {
        int64_t n = j->a->numel[t];
        int64_t lo = j->begin > offset ? j->begin - offset : 0;
        int64_t hi = j->end - offset < n ? j->end - offset : n;
        if (lo < hi) j->body(j->a, t, lo, hi, j->sums ? j->sums + NSUMS * t : 0);
        offset += n;
    }
}

static void *thread_main(void *job) {
    run_range((const job_t *)job);
    return 0;
}

/* Below this many elements one thread does the work: starting threads costs more. */
#define MIN_PARALLEL 65536
#define MAX_THREADS 64
static void parallel(const args_t *a, body_t body, int nthreads) {
    int64_t total = 0;
    for (int64_t t = 0; t < a->nt; t++) total += a->numel[t];
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads < 2 || total < MIN_PARALLEL) nthreads = 1;
    double *partial = 0; /* each thread's sums, added in thread order at the end */
    if (a->sums && nthreads > 1) {
        partial = calloc((size_t)nthreads * NSUMS * a->nt, sizeof(double));
        if (!partial) nthreads = 1;
    }
    job_t jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int k = 0; k < nthreads; k++) { /* cut points on 64-element boundaries */
        jobs[k].a = a;
        jobs[k].body = body;
        jobs[k].begin = k == 0 ? 0 : (total * k / nthreads) & ~(int64_t)63;
        jobs[k].end = k == nthreads - 1 ? total : (total * (k + 1) / nthreads) & ~(int64_t)63;
        jobs[k].sums = partial ? partial + (size_t)k * NSUMS * a->nt : a->sums;
    }
    for (int k = 1; k < nthreads; k++) {
        started[k] = pthread_create(&threads[k], 0, thread_main, &jobs[k]) == 0;
        if (!started[k]) run_range(&jobs[k]);
    }
    run_range(&jobs[0]);
    for (int k = 1; k < nthreads; k++)
        if (started[k]) pthread_join(threads[k], 0);
    if (partial) {
        const int64_t count = NSUMS * a->nt;
        for (int k = 0; k < nthreads; k++)
            for (int64_t i = 0; i < count; i++) a->sums[i] += partial[k * count + i];
        free(partial);
    }
}

/* ---------------------------------------------------------------- arithmetic, as ATen's */

#define P(S, k) ((S *)a->ptr[(k) * a->nt + t])
#define TS(k) (a->ts[(k) * a->nt + t])
#define FMA(x, y, z) _Generic((x), float: fmaf, default: fma)((x), (y), (z))
#define ABS(x) _Generic((x), float: fabsf, default: fabs)(x)
#define SQRT(x) _Generic((x), float: sqrtf, default: sqrt)(x)
#define POW_NEG(x, y) _Generic((x), float: powf_neg, default: pow)((x), (y))
/* ATen's vectorised lerp: fma(w, b - a, a) for |w| < 1/2, else fma(w - 1, b - a, b); the
   coefficient c (w or w - 1) and the choice `small` are computed once per call. */
#define LERP(x, y, c, small) FMA((c), (y) - (x), (small) ? (x) : (y))
#define LERP_COEF(w) (fabs((double)(w)) < 0.5 ? (w) : (w) - 1)
#define LERP_SMALL(w) (fabs((double)(w)) < 0.5)
/* x.add_(y, alpha=c), as ATen vectorises it: fma(y, c, x). */
#define ADD(x, y, c) FMA((y), (c), (x))
/* sign(u) + 0 u: 0 for 0, NaN for NaN and +-inf (torch.sign gives 0 for NaN). */
#define SIGN(C, u) ((C)((u) > 0) - (C)((u) < 0) + (u) * 0)

/* Reductions, block by block: a loop like the update loops (so it vectorises) writes each
   element's terms, in double, to buffers of BLOCK elements on the stack; `sum_products` then
   adds them up in LANES accumulators, and the block's sums are added to the totals in order
   (rounding error about (BLOCK/LANES + n/BLOCK) eps instead of n eps). A float32 product is
   exact in double. */
#define LANES 8
#define BLOCK 1024
/* sum x_i y_i (sum x_i when y is null) over n <= BLOCK elements, added to *total. */
static inline void sum_products(const double *x, const double *y, int64_t n, double *total) {
    double lanes[LANES] = {0};
    int64_t i = 0;
    if (y) {
        for (; i + LANES <= n; i += LANES)
            for (int j = 0; j < LANES; j++) lanes[j] += x[i + j] * y[i + j];
        for (; i < n; i++) lanes[0] += x[i] * y[i];
    } else {
        for (; i + LANES <= n; i += LANES)
            for (int j = 0; j < LANES; j++) lanes[j] += x[i + j];
        for (; i < n; i++) lanes[0] += x[i];
    }
    for (int j = 0; j < LANES; j++) *total += lanes[j];
}
/* sum x_i^2, sum y_i x_i, sum y_i^2 over n <= BLOCK elements, added to total[0..2]. */
static inline void sum_gram(const double *x, const double *y, int64_t n, double *total) {
    double xx[LANES] = {0}, yx[LANES] = {0}, yy[LANES] = {0};
    int64_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int j = 0; j < LANES; j++) {
            xx[j] += x[i + j] * x[i + j];
            yx[j] += y[i + j] * x[i + j];
            yy[j] += y[i + j] * y[i + j];
        }
    for (; i < n; i++) {
        xx[0] += x[i] * x[i];
        yx[0] += y[i] * x[i];
        yy[0] += y[i] * y[i];
    }
    for (int j = 0; j < LANES; j++) {
        total[0] += xx[j];
        total[1] += yx[j];
        total[2] += yy[j];
    }
}
/* For each block of [lo, hi): FILL(SUF, k, i) sets buffer entries x[k], y[k] from element i, then
   SUM(n) adds the block's n entries to acc. */
#define REDUCE(SUF, lo, hi, FILL, SUM)                                                             \
    for (int64_t start = (lo); start < (hi); start += BLOCK) {                                     \
        const int64_t n = (hi) - start < BLOCK ? (hi) - start : BLOCK;                             \
        double x[BLOCK], y[BLOCK];                                                                 \
        (void)y;                                                                                   \
        for (int64_t k = 0; k < n; k++) FILL(SUF, k, start + k);                                   \
        SUM(n);                                                                                    \
    }

/* ---------------------------------------------------------------- the update rules */

/* The Lion family's interpolation u = lerp(m, g, 1 - beta1), its step and its momentum. */
#define LION_LOOP(C, SUF, D)                                                                       \
    for (int64_t i = lo; i < hi; i++) {                                                            \
        C wi = load_##SUF(w[i]), gi = load_##SUF(g[i]), mi = load_##SUF(m[i]);                     \
        C u = LERP(mi, gi, c1, s1);                                                                \
        w[i] = store_##SUF(ADD(wi * decay, (D), -lr));                                             \
        m[i] = store_##SUF(LERP(mi, gi, c2, s2));                                                  \
    }
#define LION_COEFFICIENTS(C, W1, W2)                                                               \
    const C c1 = LERP_COEF((C)(W1)), c2 = LERP_COEF((C)(W2));                                      \
    const int s1 = LERP_SMALL((C)(W1)), s2 = LERP_SMALL((C)(W2))
/* LPSGDM's step from u = g, or from the new momentum u = buf mom + g keep (stored rounded,
   used unrounded, as the reference does). */
#define LP_LOOP(C, SUF, MOMENTUM, D)                                                               \
    for (int64_t i = lo; i < hi; i++) {                                                            \
        C wi = load_##SUF(w[i]), u = load_##SUF(g[i]);                                             \
        if (MOMENTUM) {                                                                            \
            u = ADD(load_##SUF(buf[i]) * mom, u, keep);                                            \
            buf[i] = store_##SUF(u);                                                               \
        }                                                                                          \
        w[i] = store_##SUF(ADD(wi * decay, (D), -lr));                                             \
    }

#define KERNELS(S, C, SUF)                                                                         \
/* Lion-family directions that need no statistics: w, g, m; gs: lr w1 w2 decay eps;                \
   flags: 0 sign(u), 1 element u/(|u|+eps), 2 the same with u zeroed where w != 0. */              \
static void lion_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {          \
    S *restrict w = P(S, 0), *restrict m = P(S, 2);                                                \
    const S *restrict g = P(S, 1);                                                                 \
    const C lr = a->gs[0], decay = a->gs[3], eps = a->gs[4];                                       \
    LION_COEFFICIENTS(C, a->gs[1], a->gs[2]);                                                      \
    (void)acc;                                                                                     \
    if (a->flags == 0) LION_LOOP(C, SUF, SIGN(C, u))                                               \
    else if (a->flags == 1) LION_LOOP(C, SUF, u / (ABS(u) + eps))                                  \
    else LION_LOOP(C, SUF, (wi != 0 ? (C)0 : u) / (ABS(wi != 0 ? (C)0 : u) + eps))                 \
}                                                                                                  \
/* Statistics of u = lerp(m, g, w1) per tensor, nothing written: g, m, w; gs: w1;                  \
   sums: sum u^2, sum w u, sum w^2 (flags 1; else only sum u^2, and w is not read). */             \
static void lion_sums_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {     \
    const S *restrict g = P(S, 0), *restrict m = P(S, 1), *restrict w = P(S, 2);                   \
    LION_COEFFICIENTS(C, a->gs[0], a->gs[0]);                                                      \
    (void)c2, (void)s2;                                                                            \
    if (a->flags) {                                                                                \
        REDUCE(SUF, lo, hi, FILL_U_AND_W, SUM_ORTHOGONAL)                                          \
    } else {                                                                                       \
        REDUCE(SUF, lo, hi, FILL_U, SUM_SQUARES)                                                   \
    }                                                                                              \
}                                                                                                  \
/* The normalised step: w, g, m; gs: lr w1 w2 decay; ts: s (scale), -c (projection onto w,         \
   flags 1): u = lerp(m, g, w1) (+ w (-c)), w = w decay - lr (u s), m = lerp(m, g, w2). */         \
static void lion_scaled_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {   \
    S *restrict w = P(S, 0), *restrict m = P(S, 2);                                                \
    const S *restrict g = P(S, 1);                                                                 \
    const C lr = a->gs[0], decay = a->gs[3], s = TS(0), neg_c = TS(1);                             \
    LION_COEFFICIENTS(C, a->gs[1], a->gs[2]);                                                      \
    (void)acc;                                                                                     \
    if (a->flags) LION_LOOP(C, SUF, (u + wi * neg_c) * s)                                          \
    else LION_LOOP(C, SUF, u * s)                                                                  \
}                                                                                                  \
/* LPSGDM: w, g, buf; gs: lr momentum 1-dampening decay eps rho;                                   \
   flags: 1 momentum buffer, 2 rho != 0. */                                                        \
static void lp_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {            \
    S *restrict w = P(S, 0), *restrict buf = P(S, 2);                                              \
    const S *restrict g = P(S, 1);                                                                 \
    const C lr = a->gs[0], mom = a->gs[1], keep = a->gs[2], decay = a->gs[3];                      \
    const C eps = a->gs[4], rho = a->gs[5];                                                        \
    (void)acc;                                                                                     \
    switch (a->flags) {                                                                            \
    case 3: LP_LOOP(C, SUF, 1, POW_NEG(ABS(u) + eps, -rho) * u) break;                             \
    case 2: LP_LOOP(C, SUF, 0, POW_NEG(ABS(u) + eps, -rho) * u) break;                             \
    case 1: LP_LOOP(C, SUF, 1, u) break;                                                           \
    default: LP_LOOP(C, SUF, 0, u)                                                                 \
    }                                                                                              \
}                                                                                                  \
/* Adan: w, g, m, d, n, g_prev; gs: w1 w2 beta2 beta3 1-beta3 eps decay prox clip;                 \
   ts: sqrt(1-beta3^t), -lr/(1-beta1^t), -lr beta2/(1-beta2^t). The loop is a function             \
   of its own: gcc trusts `restrict` on parameters, and six arrays are too many to                 \
   version for aliasing. */                                                                        \
static void adan_span_##SUF(S *restrict w, const S *restrict g, S *restrict m, S *restrict d,      \
                            S *restrict n, S *restrict gp, int64_t lo, int64_t hi,                 \
                            const C *k) {                                                          \
    const C c1 = k[0], c2 = k[1], b2 = k[2], b3 = k[3], c3 = k[4], eps = k[5];                     \
    const C decay = k[6], prox = k[7], clip = k[8], bc3 = k[9], k1 = k[10], k2 = k[11];            \
    const int s1 = k[12] != 0, s2 = k[13] != 0;                                                    \
    for (int64_t i = lo; i < hi; i++) {                                                            \
        C gi = load_##SUF(g[i]) * clip, diff = gi - load_##SUF(gp[i]);                             \
        C mi = LERP(load_##SUF(m[i]), gi, c1, s1), di = LERP(load_##SUF(d[i]), diff, c2, s2);      \
        C mixed = diff * b2 + gi;                                                                  \
        C ni = load_##SUF(n[i]) * b3 + c3 * mixed * mixed;                                         \
        C denom = SQRT(ni) / bc3 + eps;                                                            \
        C wi = load_##SUF(w[i]) * decay;                                                           \
        wi = wi + k1 * mi / denom;                                                                 \
        wi = wi + k2 * di / denom;                                                                 \
        w[i] = store_##SUF(wi / prox);                                                             \
        m[i] = store_##SUF(mi);                                                                    \
        d[i] = store_##SUF(di);                                                                    \
        n[i] = store_##SUF(ni);                                                                    \
        gp[i] = store_##SUF(gi);                                                                   \
    }                                                                                              \
}                                                                                                  \
static void adan_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {          \
    const double *gs = a->gs;                                                                      \
    const C k[14] = {LERP_COEF((C)gs[0]), LERP_COEF((C)gs[1]), gs[2], gs[3], gs[4], gs[5],         \
                     gs[6], gs[7], gs[8], TS(0), TS(1), TS(2), LERP_SMALL((C)gs[0]),               \
                     LERP_SMALL((C)gs[1])};                                                        \
    (void)acc;                                                                                     \
    adan_span_##SUF(P(S, 0), P(S, 1), P(S, 2), P(S, 3), P(S, 4), P(S, 5), lo, hi, k);              \
}                                                                                                  \
/* sum |g| per tensor (AGR's statistic): g; sums[0]. */                                            \
static void abs_sums_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {      \
    const S *restrict g = P(S, 0);                                                                 \
    REDUCE(SUF, lo, hi, FILL_ABS, SUM)                                                             \
}                                                                                                  \
/* AGR: out = (|g| / (-total) + 1) g: g, out; ts: -total. */                                       \
static void agr_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi, double *acc) {           \
    const S *restrict g = P(S, 0);                                                                 \
    S *restrict out = P(S, 1);                                                                     \
    const C neg_total = TS(0);                                                                     \
    (void)acc;                                                                                     \
    for (int64_t i = lo; i < hi; i++) {                                                            \
        C gi = load_##SUF(g[i]);                                                                   \
        out[i] = store_##SUF((ABS(gi) / neg_total + 1) * gi);                                      \
    }                                                                                              \
}

/* The reductions' buffer entries and sums: acc[0] = sum u^2 (or sum |g|), acc[1] = sum w u,
   acc[2] = sum w^2. */
#define FILL_U(SUF, k, i) x[k] = LERP(load_##SUF(m[i]), load_##SUF(g[i]), c1, s1)
#define FILL_U_AND_W(SUF, k, i) (FILL_U(SUF, k, i), y[k] = load_##SUF(w[i]))
#define FILL_ABS(SUF, k, i) x[k] = ABS(load_##SUF(g[i]))
#define SUM_SQUARES(n) sum_products(x, x, n, acc)
#define SUM_ORTHOGONAL(n) sum_gram(x, y, n, acc)
#define SUM(n) sum_products(x, 0, n, acc)

KERNELS(float, float, f32)
KERNELS(double, double, f64)
KERNELS(bf16, float, bf16)
KERNELS(f16, float, f16)

#define EXPORT(NAME)                                                                               \
    void geoptim_##NAME(int64_t nt, const int64_t *numel, void *const *ptr, const double *gs,      \
                        const double *ts, int64_t flags, double *sums, int nthreads) {             \
        args_t a = {nt, numel, ptr, gs, ts, flags, sums};                                          \
        parallel(&a, NAME, nthreads);                                                              \
    }
#define EXPORT_ALL(KERNEL) EXPORT(KERNEL##_f32) EXPORT(KERNEL##_f64) EXPORT(KERNEL##_bf16)         \
    EXPORT(KERNEL##_f16)
EXPORT_ALL(lion) EXPORT_ALL(lion_sums) EXPORT_ALL(lion_scaled) EXPORT_ALL(lp) EXPORT_ALL(adan)
EXPORT_ALL(abs_sums) EXPORT_ALL(agr)
