r"""Fused CPU kernels: each optimizer's per-element update in one pass over memory.

An optimizer step is memory-bound. The multi-tensor (``torch._foreach_*``) kernels make one pass
over memory per elementary operation (Lion: 13 loads and stores per parameter); a fused kernel
loads every parameter, gradient and state element once and stores what changes once (Lion: 5).
geoptim's fused kernels are a few lines of C (:data:`SOURCE`), compiled on first use with the
system C compiler (``$CC``, default ``cc``; well under a second) into a cached shared library
and called through :mod:`ctypes`: one call per step and param group, over every tensor, split
between ``torch.get_num_threads()`` POSIX threads. Everything that reduces a whole tensor (norms,
sums) stays in Python and goes through :mod:`geoptim._stats`; the C code is element-wise only.

Arithmetic mirrors the eager kernels operation by operation in the tensor's own precision,
with fused multiply-adds exactly where ATen's vectorised CPU kernels have them (``lerp``,
``add(alpha=)``) and nowhere else, so the fused path matches the reference to rounding (the
tests check float64 parity at ``rtol=1e-12``). The float32 l_p map's power is ``powf_neg``
below: branch-free (so it vectorises), evaluated in double, within 0.5 ulp + 0.02 ulp of the
exact power (the tests bound the whole map by 1.5 float32 eps and by torch's own error); the
float64 one is the C library's ``pow`` (glibc's vectorised libmvec where available).

Which tensors take the fused path (:func:`fusable`): CPU, float32 or float64, contiguous, plain
``Tensor``/``Parameter`` (no subclass such as a sharded tensor), at least :data:`MIN_NUMEL`
elements (every non-empty one by default). The others, and every tensor when no compiler is
found or the build fails, take the multi-tensor path, which computes the same update; so
``fused=True`` always works.

The cache holds code that runs in your process, so it must be yours alone. It is
``$GEOPTIM_CACHE`` if set, else ``$XDG_CACHE_HOME/geoptim`` (default ``~/.cache/geoptim``), else,
when that cannot be created (read-only or no home), ``geoptim-<uid>`` in the temporary directory.
It is created with mode 0700, and used only if it is owned by the current user and not group- or
world-writable; otherwise it is refused (with a warning) and the library is built for the
process alone, in a private temporary directory. A cached library is loaded only if it is a
regular file (not a symbolic link) owned by the user and not group- or world-writable (checked
on the descriptor it is loaded through); otherwise it is rebuilt and replaced atomically.
``GEOPTIM_NO_BUILD=1`` never runs the compiler: a cached library that passes the checks is still
used, else the multi-tensor path. Any failure to build, load or bind the library leaves the
multi-tensor path in use, with one warning.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import secrets
import shutil
import stat
import subprocess
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.weak import WeakIdKeyDictionary

#: Smaller tensors take the multi-tensor path. One fused call serves every tensor of a group, so
#: its fixed cost does not grow with the number of tensors and even small ones pay.
MIN_NUMEL = 1

FUSED_DTYPES = {torch.float32: "f32", torch.float64: "f64"}
_PLAIN = (Tensor, nn.Parameter)

SOURCE = r"""
#include <math.h>
#include <pthread.h>
#include <stdint.h>

#ifdef GEOPTIM_MVEC  /* vectorised double pow from glibc's libmvec */
__attribute__((__simd__("notinbranch"))) double pow(double, double);
#endif

#include <string.h>

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

/* One call: nt tensors; ptr[k*nt + t] is list k's tensor t; gs the group's scalars;
   ts[k*nt + t] the k-th per-tensor scalar; flags select a variant. */
typedef struct {
    int64_t nt;
    const int64_t *numel;
    void *const *ptr;
    const double *gs;
    const double *ts;
    int64_t flags;
} args_t;

typedef void (*body_t)(const args_t *, int64_t t, int64_t lo, int64_t hi);
typedef struct { const args_t *a; body_t body; int64_t begin, end; } job_t;

/* Elements [begin, end) of the tensors laid end to end. */
static void run_range(const job_t *j) {
    int64_t offset = 0;
    for (int64_t t = 0; t < j->a->nt && offset < j->end; t++) {
        int64_t n = j->a->numel[t];
        int64_t lo = j->begin > offset ? j->begin - offset : 0;
        int64_t hi = j->end - offset < n ? j->end - offset : n;
        if (lo < hi) j->body(j->a, t, lo, hi);
        offset += n;
    }
}

static void *thread_main(void *job) { run_range((const job_t *)job); return 0; }

#define MAX_THREADS 64
static void parallel(const args_t *a, body_t body, int nthreads) {
    int64_t total = 0;
    for (int64_t t = 0; t < a->nt; t++) total += a->numel[t];
    if (nthreads > MAX_THREADS) nthreads = MAX_THREADS;
    if (nthreads < 2 || total < 65536) nthreads = 1;
    job_t jobs[MAX_THREADS];
    pthread_t threads[MAX_THREADS];
    int started[MAX_THREADS];
    for (int k = 0; k < nthreads; k++) {  /* cut points on 64-element boundaries */
        jobs[k].a = a;
        jobs[k].body = body;
        jobs[k].begin = k == 0 ? 0 : (total * k / nthreads) & ~(int64_t)63;
        jobs[k].end = k == nthreads - 1 ? total : (total * (k + 1) / nthreads) & ~(int64_t)63;
    }
    for (int k = 1; k < nthreads; k++) {
        started[k] = pthread_create(&threads[k], 0, thread_main, &jobs[k]) == 0;
        if (!started[k]) run_range(&jobs[k]);
    }
    run_range(&jobs[0]);
    for (int k = 1; k < nthreads; k++)
        if (started[k]) pthread_join(threads[k], 0);
}

#define P(T, k) ((T *)a->ptr[(k) * a->nt + t])
#define TS(k) (a->ts[(k) * a->nt + t])
#define FMA(x, y, z) _Generic((x), float: fmaf, default: fma)((x), (y), (z))
/* ATen's vectorised lerp: fma(w, b - a, a) for |w| < 1/2, else fma(w - 1, b - a, b); the
   coefficient c (w or w - 1) and the choice `small` are computed once per call. */
#define LERP(x, y, c, small) FMA((c), (y) - (x), (small) ? (x) : (y))
#define LERP_COEF(w) (fabs((double)(w)) < 0.5 ? (w) : (w) - 1)
#define LERP_SMALL(w) (fabs((double)(w)) < 0.5)
/* x.add_(y, alpha=c), as ATen vectorises it: fma(y, c, x). */
#define ADD(x, y, c) FMA((y), (c), (x))
/* sign(u) + 0 u: 0 for 0, NaN for NaN and +-inf (torch.sign gives 0 for NaN). */
#define SIGN(T, u) ((T)((u) > 0) - (T)((u) < 0) + (u) * 0)
/* One loop per variant, so that every loop is branch-free and vectorises. */
#define INTERP_LOOP(D)                                                                      \
    for (int64_t i = lo; i < hi; i++) {                                                     \
        __typeof__(*w) u = LERP(m[i], g[i], c1, s1);                                        \
        w[i] = ADD(w[i] * decay, (D), -lr);                                                 \
        m[i] = LERP(m[i], g[i], c2, s2);                                                    \
    }
#define LP_LOOP(U, D)                                                                       \
    for (int64_t i = lo; i < hi; i++) {                                                     \
        __typeof__(*w) u = (U);                                                             \
        w[i] = ADD(w[i] * decay, (D), -lr);                                                 \
    }

#define KERNELS(T, SUF, POW, ABS, SQRT)                                                     \
/* Lion-family directions that need no statistics: w, g, m; gs: lr w1 w2 decay eps;         \
   flags: 1 element direction u/(|u|+eps) (else sign), 2 also zero u where w != 0. */       \
static void interp_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi) {              \
    T *restrict w = P(T, 0), *restrict m = P(T, 2); const T *restrict g = P(T, 1);          \
    const T lr = a->gs[0], w1 = a->gs[1], w2 = a->gs[2], decay = a->gs[3], eps = a->gs[4];  \
    const T c1 = LERP_COEF(w1), c2 = LERP_COEF(w2);                                         \
    const int s1 = LERP_SMALL(w1), s2 = LERP_SMALL(w2);                                     \
    if (a->flags == 0) INTERP_LOOP(SIGN(T, u))                                              \
    else if (a->flags == 1) INTERP_LOOP(u / (ABS(u) + eps))                                 \
    else INTERP_LOOP((w[i] != 0 ? (T)0 : u) / (ABS(w[i] != 0 ? (T)0 : u) + eps))            \
}                                                                                           \
/* u = lerp(m, g, w1) into a buffer, m = lerp(m, g, w2): g, m, u; gs: w1 w2. */             \
static void split_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi) {               \
    const T *restrict g = P(T, 0); T *restrict m = P(T, 1), *restrict u = P(T, 2);          \
    const T c1 = LERP_COEF((T)a->gs[0]), c2 = LERP_COEF((T)a->gs[1]);                       \
    const int s1 = LERP_SMALL((T)a->gs[0]), s2 = LERP_SMALL((T)a->gs[1]);                   \
    for (int64_t i = lo; i < hi; i++) {                                                     \
        u[i] = LERP(m[i], g[i], c1, s1);                                                    \
        m[i] = LERP(m[i], g[i], c2, s2);                                                    \
    }                                                                                       \
}                                                                                           \
/* w = w decay - lr (u s): w, u; gs: lr decay; ts: s. */                                    \
static void scaled_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi) {              \
    T *restrict w = P(T, 0); const T *restrict u = P(T, 1);                                 \
    const T lr = a->gs[0], decay = a->gs[1], s = TS(0);                                     \
    for (int64_t i = lo; i < hi; i++) w[i] = ADD(w[i] * decay, u[i] * s, -lr);              \
}                                                                                           \
/* LPSGDM: w, g, buf; gs: lr momentum 1-dampening decay eps rho;                            \
   flags: 1 momentum buffer, 2 rho != 0. */                                                 \
static void lp_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi) {                  \
    T *restrict w = P(T, 0), *restrict buf = P(T, 2); const T *restrict g = P(T, 1);        \
    const T lr = a->gs[0], mom = a->gs[1], keep = a->gs[2], decay = a->gs[3];               \
    const T eps = a->gs[4], rho = a->gs[5];                                                 \
    switch (a->flags) {                                                                     \
    case 3:                                                                                 \
        LP_LOOP(buf[i] = ADD(buf[i] * mom, g[i], keep), POW(ABS(u) + eps, -rho) * u) break; \
    case 2: LP_LOOP(g[i], POW(ABS(u) + eps, -rho) * u) break;                               \
    case 1: LP_LOOP(buf[i] = ADD(buf[i] * mom, g[i], keep), u) break;                       \
    default: LP_LOOP(g[i], u)                                                               \
    }                                                                                       \
}                                                                                           \
/* Adan: w, g, m, d, n, g_prev; gs: w1 w2 beta2 beta3 1-beta3 eps decay prox clip;          \
   ts: sqrt(1-beta3^t), -lr/(1-beta1^t), -lr beta2/(1-beta2^t). The loop is a function      \
   of its own: gcc trusts `restrict` on parameters, and six arrays are too many to          \
   version for aliasing. */                                                                 \
static void adan_span_##SUF(T *restrict w, const T *restrict g, T *restrict m, T *restrict d, \
                            T *restrict n, T *restrict gp, int64_t lo, int64_t hi, const T *k) { \
    const T c1 = k[0], c2 = k[1], b2 = k[2], b3 = k[3], c3 = k[4], eps = k[5];              \
    const T decay = k[6], prox = k[7], clip = k[8], bc3 = k[9], k1 = k[10], k2 = k[11];     \
    const int s1 = k[12] != 0, s2 = k[13] != 0;                                             \
    for (int64_t i = lo; i < hi; i++) {                                                     \
        T gi = g[i] * clip, diff = gi - gp[i];                                              \
        T mi = LERP(m[i], gi, c1, s1), di = LERP(d[i], diff, c2, s2);                       \
        T mixed = diff * b2 + gi;                                                           \
        T ni = n[i] * b3 + c3 * mixed * mixed;                                              \
        T denom = SQRT(ni) / bc3 + eps;                                                     \
        T wi = w[i] * decay;                                                                \
        wi = wi + k1 * mi / denom;                                                          \
        wi = wi + k2 * di / denom;                                                          \
        w[i] = wi / prox;                                                                   \
        m[i] = mi;                                                                          \
        d[i] = di;                                                                          \
        n[i] = ni;                                                                          \
        gp[i] = gi;                                                                         \
    }                                                                                       \
}                                                                                           \
static void adan_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi) {                \
    const double *gs = a->gs;                                                               \
    const T k[14] = {LERP_COEF((T)gs[0]), LERP_COEF((T)gs[1]), gs[2], gs[3], gs[4], gs[5],  \
                     gs[6], gs[7], gs[8], TS(0), TS(1), TS(2), LERP_SMALL((T)gs[0]),        \
                     LERP_SMALL((T)gs[1])};                                                 \
    adan_span_##SUF(P(T, 0), P(T, 1), P(T, 2), P(T, 3), P(T, 4), P(T, 5), lo, hi, k);       \
}                                                                                           \
/* AGR: out = (|g| / (-total) + 1) g: g, out; ts: -total. */                                \
static void agr_##SUF(const args_t *a, int64_t t, int64_t lo, int64_t hi) {                 \
    const T *restrict g = P(T, 0); T *restrict out = P(T, 1);                               \
    const T neg_total = TS(0);                                                              \
    for (int64_t i = lo; i < hi; i++) out[i] = (ABS(g[i]) / neg_total + 1) * g[i];          \
}

KERNELS(float, f32, powf_neg, fabsf, sqrtf)
KERNELS(double, f64, pow, fabs, sqrt)

#define EXPORT(NAME)                                                                        \
void geoptim_##NAME(int64_t nt, const int64_t *numel, void *const *ptr, const double *gs,   \
                    const double *ts, int64_t flags, int nthreads) {                        \
    args_t a = {nt, numel, ptr, gs, ts, flags};                                             \
    parallel(&a, NAME, nthreads);                                                           \
}
EXPORT(interp_f32) EXPORT(interp_f64) EXPORT(split_f32) EXPORT(split_f64)
EXPORT(scaled_f32) EXPORT(scaled_f64) EXPORT(lp_f32) EXPORT(lp_f64)
EXPORT(adan_f32) EXPORT(adan_f64) EXPORT(agr_f32) EXPORT(agr_f64)
"""

_BASE_FLAGS = [
    *("-O3", "-shared", "-fPIC", "-pthread"),
    *("-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off"),
]
#: Tried in order until one builds: vectorised libmvec pow with the host's ISA, then plainer.
_VARIANTS = [
    ["-march=native", "-DGEOPTIM_MVEC", "-lmvec", "-lm"],
    ["-march=native", "-lm"],
    ["-lm"],
]
_KERNELS = ("interp", "split", "scaled", "lp", "adan", "agr")

_lock = threading.Lock()
_library: ctypes.CDLL | None = None
_tried = False
#: Descriptors of the loaded library files, never closed: each library is loaded through
#: ``/proc/self/fd/N``, and the loader would take a later file opened as the same ``N`` for the
#: one already loaded under that name.
_pinned: list[int] = []


class Unavailable(Exception):
    """The fused library can neither be loaded nor built; the message says why."""


#: What loading or building can raise; each leaves the multi-tensor path in use.
_LOAD_ERRORS = (OSError, AttributeError, ValueError, Unavailable, subprocess.SubprocessError)


def cache_candidates() -> list[Path]:
    """The cache directories to try, in order: ``$GEOPTIM_CACHE`` alone if set; else
    ``$XDG_CACHE_HOME/geoptim`` (or ``~/.cache/geoptim``), then ``geoptim-<uid>`` in the
    temporary directory for when that cannot be created (read-only or no home)."""
    explicit = os.environ.get("GEOPTIM_CACHE")
    if explicit:
        return [Path(explicit)]
    candidates = []
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    with contextlib.suppress(RuntimeError, KeyError):  # no home: arbitrary-uid containers
        base = Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache"
        candidates.append(base / "geoptim")
    return [*candidates, Path(tempfile.gettempdir()) / f"geoptim-{os.geteuid()}"]


def library_name() -> str:
    """The library's file name in the cache, specific to the source, flags and CPU."""
    return f"geoptim-fused-{_host_key()}.so"


def _unsafe(info: os.stat_result) -> str | None:
    """Why a file or directory with status ``info`` may hold code another user wrote."""
    if info.st_uid != os.geteuid():
        return f"owned by uid {info.st_uid}, not {os.geteuid()}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"group- or world-writable (mode {stat.filemode(info.st_mode)})"
    return None


def _open_cache(notes: list[str]) -> tuple[int, Path] | None:
    """A descriptor of the first cache directory that exists or can be created (mode 0700),
    and its path; ``None`` (with a note) when it is not ours alone. Every later access goes
    through the descriptor, so the path cannot be switched under us once checked."""
    for path in cache_candidates():
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        reason = _unsafe(os.fstat(fd))
        if reason is None:
            return fd, path
        os.close(fd)
        notes.append(f"cache directory {path} refused: {reason}")
        return None
    notes.append("no cache directory could be created")
    return None


def _load(dir_fd: int, name: str) -> ctypes.CDLL:
    """Load library ``name`` of the directory ``dir_fd`` if it is a regular file (not a
    symbolic link) of ours that no one else can write, and bind its kernels. The file checked is
    the file loaded (one descriptor for both). Raises ``OSError`` (missing, a link, not loadable),
    :class:`Unavailable` (unsafe) or ``AttributeError`` (a kernel missing)."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        info = os.fstat(fd)
        reason = "not a regular file" if not stat.S_ISREG(info.st_mode) else _unsafe(info)
        if reason is not None:
            raise Unavailable(f"{name} is {reason}")
        library = ctypes.CDLL(f"/proc/self/fd/{fd}")
    except BaseException:
        os.close(fd)
        raise
    _pinned.append(fd)
    for kernel in _KERNELS:
        for suffix in FUSED_DTYPES.values():
            fn = getattr(library, f"geoptim_{kernel}_{suffix}")
            fn.restype = None
            fn.argtypes = [ctypes.c_int64, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                           ctypes.c_void_p, ctypes.c_int64, ctypes.c_int]  # fmt: skip
    return library


def _compile(directory: Path) -> str:
    """Compile :data:`SOURCE` in ``directory``; the library's file name there."""
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise Unavailable("no C compiler found")
    source = directory / "geoptim-fused.c"
    source.write_text(SOURCE)
    for variant in _VARIANTS:
        command = [compiler, *_BASE_FLAGS, str(source), "-o", str(directory / "out.so"), *variant]
        result = subprocess.run(command, capture_output=True, timeout=120)
        if result.returncode == 0:
            return "out.so"
    raise Unavailable(f"the C compiler failed: {result.stderr.decode(errors='replace')[-300:]}")


def _install(build: Path, built: str, cache_fd: int, name: str) -> None:
    """Copy the new library into the cache under ``name``, atomically (a concurrent build's
    copy is replaced by an identical one)."""
    partial = f"{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(partial, flags, 0o600, dir_fd=cache_fd)
    try:
        with os.fdopen(fd, "wb") as out:
            out.write((build / built).read_bytes())
        os.replace(partial, name, src_dir_fd=cache_fd, dst_dir_fd=cache_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(partial, dir_fd=cache_fd)
        raise


def _load_or_build(notes: list[str]) -> ctypes.CDLL:
    """The cached library if it passes :func:`_load`'s checks, else a new build: installed in
    the cache and loaded from there, or loaded from its private build directory when there is
    no usable cache."""
    if platform.system() != "Linux":
        raise Unavailable("fused kernels are built on Linux only")
    name = library_name()
    cache_fd, cache_dir = _open_cache(notes) or (None, None)
    try:
        if cache_fd is not None:
            try:
                return _load(cache_fd, name)
            except FileNotFoundError:
                pass
            except (OSError, AttributeError, Unavailable) as exc:
                notes.append(f"cached library {os.path.join(cache_dir, name)} not used ({exc})")
        if os.environ.get("GEOPTIM_NO_BUILD") == "1":
            raise Unavailable("GEOPTIM_NO_BUILD=1 and no usable cached library")
        with tempfile.TemporaryDirectory(prefix="geoptim-build-") as build:
            built = _compile(Path(build))
            if cache_fd is not None:
                try:
                    _install(Path(build), built, cache_fd, name)
                    return _load(cache_fd, name)
                except OSError as exc:
                    notes.append(f"could not write the cache ({exc})")
            build_fd = os.open(build, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                return _load(build_fd, built)
            finally:
                os.close(build_fd)
    finally:
        if cache_fd is not None:
            os.close(cache_fd)


def library() -> ctypes.CDLL | None:
    """The fused kernels' library, loaded or built on first use; ``None`` if that fails. At
    most one warning per process: when the library is unavailable (every optimizer then uses
    its multi-tensor path), or when the cache was refused or a cached library replaced."""
    global _library, _tried
    with _lock:
        if not _tried:
            _tried = True
            notes: list[str] = []
            try:
                _library = _load_or_build(notes)
            except _LOAD_ERRORS as exc:
                notes.insert(0, str(exc) if isinstance(exc, Unavailable) else repr(exc))
            if _library is None:
                notes.append("using the multi-tensor path")
            if notes:
                state = "unavailable" if _library is None else "loaded"
                warnings.warn(
                    f"geoptim: fused kernels {state}: {'; '.join(notes)}",
                    RuntimeWarning,
                    stacklevel=3,
                )
    return _library


def _host_key() -> str:
    """The source, the compiler and the CPU's feature flags (``-march=native`` builds are
    specific to the CPU)."""
    cpu = ""
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        cpu = next((line for line in lines if line.startswith("flags")), "")
    text = "\n".join([SOURCE, repr(_BASE_FLAGS), repr(_VARIANTS), platform.machine(), cpu])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------- choosing the path


def kernel_mode(group: dict[str, Any]) -> str:
    """``"fused"`` (``fused=True`` whatever ``foreach`` says, as in ``torch.optim``; or both
    ``None``), ``"single"`` (``foreach=False``) or ``"multi"``."""
    foreach, fused = group["foreach"], group.get("fused")
    if fused or (fused is None and foreach is None):
        return "fused"
    return "single" if foreach is False else "multi"


def fusable(tensors: Sequence[Tensor | None]) -> bool:
    """Whether one parameter's tensors (parameter, gradient, state; ``None`` skipped) can take
    the fused path: plain CPU tensors of one float32/float64 dtype, contiguous, at least
    :data:`MIN_NUMEL` elements."""
    first = tensors[0]
    if first is None or first.numel() < MIN_NUMEL or first.dtype not in FUSED_DTYPES:
        return False
    dtype = first.dtype
    return all(
        t is None or (type(t) in _PLAIN and t.is_cpu and t.dtype == dtype and t.is_contiguous())
        for t in tensors
    )


def split_fusable(*columns: Sequence[Tensor] | None) -> tuple[list[int], list[int]]:
    """Indices of the rows (one parameter's tensors across the parallel lists ``columns``; a
    ``None`` column is skipped) that take the fused path, and of the others. Every row goes to
    the others when the library is unavailable."""
    present = [c for c in columns if c is not None]
    rows = range(len(present[0])) if present else range(0)
    fused = [i for i in rows if fusable([c[i] for c in present])]
    if fused and library() is None:
        fused = []
    fused_set = set(fused)
    return fused, [i for i in rows if i not in fused_set]


def pick(items: Sequence[Any] | None, indices: Sequence[int]) -> Any:
    """``[items[i] for i in indices]``; ``None`` stays ``None``."""
    return None if items is None else [items[i] for i in indices]


#: One buffer per owner tensor, dropped with it (no ``weakref.finalize``: its global registry
#: changes size as owners come and go, which breaks ``torch.compile``'s guards).
_workspaces: WeakIdKeyDictionary = WeakIdKeyDictionary()


def workspace(owner: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Uninitialised tensors shaped like ``like`` (one dtype), views of a buffer kept for
    ``owner`` between calls and freed with it.

    A fresh parameter-sized tensor each step costs more than the step itself on CPU (the
    allocator hands the pages back and every step faults them in again), so a kernel that needs
    one temporary keeps it, keyed by a tensor of its state.
    """
    numel = sum(t.numel() for t in like)
    buffer = _workspaces.get(owner)
    if buffer is None or buffer.numel() < numel or buffer.dtype != like[0].dtype:
        buffer = _workspaces[owner] = torch.empty(numel, dtype=like[0].dtype)
    views, offset = [], 0
    for t in like:
        views.append(buffer[offset : offset + t.numel()].view_as(t))
        offset += t.numel()
    return views


def launch(
    name: str,
    lists: Sequence[Sequence[Tensor] | None],
    group_scalars: Sequence[float] = (),
    tensor_scalars: Sequence[Sequence[float]] = (),
    flags: int = 0,
    written: Sequence[Sequence[Tensor] | None] = (),
) -> None:
    """Run fused kernel ``name`` over tensors of one dtype: ``lists`` parallel tensor lists
    (``None`` for an absent one), ``tensor_scalars`` per-tensor values, ``written`` the lists
    the kernel modifies (their autograd version counters are bumped, as an in-place op does)."""
    lib = library()
    assert lib is not None, "launch() called without the fused library"
    first = next(c for c in lists if c is not None)
    nt = len(first)
    if nt == 0:
        return
    suffix = FUSED_DTYPES[first[0].dtype]
    numel = (ctypes.c_int64 * nt)(*[t.numel() for t in first])
    pointers = [t.data_ptr() if c is not None else 0 for c in lists for t in (c or first)]
    ptr = (ctypes.c_void_p * len(pointers))(*pointers)
    gs = (ctypes.c_double * max(len(group_scalars), 1))(*group_scalars)
    flat_ts = [float(v) for column in tensor_scalars for v in column]
    ts = (ctypes.c_double * max(len(flat_ts), 1))(*flat_ts)
    fn = getattr(lib, f"geoptim_{name}_{suffix}")
    fn(nt, numel, ptr, gs, ts, flags, torch.get_num_threads())
    torch._C._increment_version([t for column in written for t in column or ()])


def launch_by_dtype(
    name: str,
    lists: Sequence[Sequence[Tensor] | None],
    group_scalars: Sequence[float] = (),
    tensor_scalars: Sequence[Sequence[float]] = (),
    flags: int = 0,
    written: Sequence[int] = (),
) -> None:
    """:func:`launch` once per dtype present (``written``: indices into ``lists``)."""
    first = next(c for c in lists if c is not None)
    for dtype in dict.fromkeys(t.dtype for t in first):
        rows = [i for i, t in enumerate(first) if t.dtype == dtype]
        sub = [pick(c, rows) for c in lists]
        launch(
            name,
            sub,
            group_scalars,
            [pick(column, rows) for column in tensor_scalars],
            flags,
            [sub[k] for k in written],
        )
