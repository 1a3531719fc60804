r"""Fused CPU kernels: each optimizer's per-element update in one pass over memory.

An optimizer step is memory-bound. The multi-tensor (``torch._foreach_*``) kernels make one pass
over memory per elementary operation (Lion: 13 loads and stores per parameter); a fused kernel
loads every parameter, gradient and state element once and stores what changes once (Lion: 5).
geoptim's fused kernels are C source shipped with the package (``geoptim/csrc/fused.c``,
:data:`SOURCE_PATH`), compiled on first use with the system C compiler (``$CC``, default ``cc``;
about a second) into a cached shared library and called through :mod:`ctypes`: one call per
step, param group and dtype, over every tensor, split between ``torch.get_num_threads()`` POSIX
threads (one thread below 65536 elements).

Each update rule is written once in that file, in the compute type, and instantiated for every
storage type of :data:`FUSED_DTYPES`: float32 and float64 compute in their own precision;
bfloat16 and float16 are loaded into float32, computed exactly as float32 is, and stored rounded
to nearest even, in one pass (their state keeps the parameter's dtype, as ``zeros_like``
creates it). So a 16-bit fused step equals the single-tensor reference's (float32 working
copies, written back rounded) up to the reference's own float32 rounding, and is within one
16-bit ulp of the float64 step plus the float32 arithmetic's error (tested).

Arithmetic mirrors the eager kernels operation by operation, with fused multiply-adds exactly
where ATen's vectorised CPU kernels have them (``lerp``, ``add(alpha=)``) and nowhere else, so
the fused path matches the reference to rounding (the tests check float64 parity at
``rtol=1e-12``). The float32 l_p map's power is ``powf_neg``: branch-free (so it vectorises),
evaluated in double, within 0.5 ulp + 0.02 ulp of the exact power (the tests bound the whole map
by 1.5 float32 eps and by torch's own error); the float64 one is the C library's ``pow``
(glibc's vectorised libmvec where available).

Kernels that need per-tensor statistics (SepNorm, OrtSepNorm, NormSGD, AGR) compute them in the
pass that reads the data: float64 sums per tensor (a float32 product is exact in float64),
returned to Python, where :func:`geoptim._stats.reduce_partial_sums` completes them (the one
statistics interface, which sums sharded tensors across ranks).

Which tensors take the fused path (:func:`fusable`): CPU, one dtype of :data:`FUSED_DTYPES`,
parameter, gradient and state dense in memory with equal strides (any layout: channels_last and
permuted tensors are flat memory all the same), plain ``Tensor``/``Parameter`` (no subclass such
as a sharded tensor), at least :data:`MIN_NUMEL` elements (every non-empty one by default). A
param group may mix dtypes: one launch per dtype. The others, and every tensor when no compiler
is found or the build fails, take the multi-tensor path, which computes the same update; so
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

import array
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

#: The dtypes the kernels take, with their suffix in the library. 16-bit tensors are computed in
#: float32 inside the kernel and stored rounded to nearest even (their state keeps their dtype).
FUSED_DTYPES = {
    torch.float32: "f32",
    torch.float64: "f64",
    torch.bfloat16: "bf16",
    torch.float16: "f16",
}
_PLAIN = (Tensor, nn.Parameter)

#: The kernels' C source (package data, compiled on first use): every update rule written once
#: and instantiated for each storage type (:data:`FUSED_DTYPES`).
SOURCE_PATH = Path(__file__).with_name("csrc") / "fused.c"
SOURCE = SOURCE_PATH.read_text()

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
_KERNELS = ("lion", "lion_sums", "lion_scaled", "lp", "adan", "abs_sums", "agr")
#: Doubles each reducing kernel adds per tensor (``NSUMS`` in the C source).
NSUMS = 3

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
            pointer = ctypes.c_void_p
            fn.argtypes = [ctypes.c_int64, pointer, pointer, pointer, pointer, ctypes.c_int64,
                           pointer, ctypes.c_int]  # fmt: skip
    library.has_f16 = bool(ctypes.c_int.in_dll(library, "geoptim_has_f16").value)
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
    the fused path: plain CPU tensors of one dtype of :data:`FUSED_DTYPES`, at least
    :data:`MIN_NUMEL` elements, dense in memory (:func:`dense`: any layout, channels_last and
    permuted ones included) with equal strides, so that element ``i`` of the memory of each is
    the same element of the tensor."""
    first = tensors[0]
    if first is None or type(first) not in _PLAIN or first.dtype not in FUSED_DTYPES:
        return False
    if not first.is_cpu or first.numel() < MIN_NUMEL:
        return False
    dtype, strides = first.dtype, first.stride()
    for t in tensors[1:]:
        if t is not None and (
            type(t) not in _PLAIN or t.dtype != dtype or t.stride() != strides or not t.is_cpu
        ):
            return False
    return dense(first)


def dense(t: Tensor) -> bool:
    """Whether the elements of ``t`` fill a block of memory, each once (contiguous in some order
    of its dimensions: channels_last, a permutation, a transpose)."""
    if t.is_contiguous():
        return True
    expected = 1
    for stride, size in sorted(zip(t.stride(), t.shape)):
        if size != 1:
            if stride != expected:
                return False
            expected *= size
    return True


def split_fusable(*columns: Sequence[Tensor] | None) -> tuple[list[int], list[int]]:
    """Indices of the rows (one parameter's tensors across the parallel lists ``columns``; a
    ``None`` column is skipped) that take the fused path, and of the others. Every row goes to
    the others when the library is unavailable (float16 rows, when its compiler has no
    ``_Float16``)."""
    present = [c for c in columns if c is not None]
    rows = range(len(present[0])) if present else range(0)
    fused = [i for i in rows if fusable([c[i] for c in present])]
    if fused:
        lib = library()
        if lib is None:
            fused = []
        elif not lib.has_f16:
            fused = [i for i in fused if present[0][i].dtype != torch.float16]
    fused_set = set(fused)
    return fused, [i for i in rows if i not in fused_set]


def pick(items: Sequence[Any] | None, indices: Sequence[int]) -> Any:
    """``[items[i] for i in indices]``; ``None`` stays ``None``."""
    return None if items is None else [items[i] for i in indices]


#: One buffer per owner tensor, dropped with it (no ``weakref.finalize``: its global registry
#: changes size as owners come and go, which breaks ``torch.compile``'s guards).
_workspaces: WeakIdKeyDictionary = WeakIdKeyDictionary()


def workspace(owner: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Uninitialised tensors shaped and strided like the dense tensors ``like`` (one dtype),
    views of a buffer kept for ``owner`` between calls and freed with it (the views themselves
    are kept too, and returned again while ``like`` keeps its shapes and strides).

    A fresh parameter-sized tensor each step costs more than the step itself on CPU (the
    allocator hands the pages back and every step faults them in again), so a kernel that must
    hand out a result (AGR's transformed gradient) keeps it, keyed by a tensor of its state.
    """
    layout = (like[0].dtype, *((t.shape, t.stride()) for t in like))
    kept = _workspaces.get(owner)
    if kept is not None and kept[0] == layout:  # the same views as last time
        return kept[2]
    numel = sum(t.numel() for t in like)
    buffer = None if kept is None else kept[1]
    if buffer is None or buffer.numel() < numel or buffer.dtype != like[0].dtype:
        buffer = torch.empty(numel, dtype=like[0].dtype)
    views, offset = [], 0
    for t in like:
        views.append(buffer.as_strided(t.shape, t.stride(), offset))
        offset += t.numel()
    _workspaces[owner] = (layout, buffer, views)
    return views


def launch(
    name: str,
    lists: Sequence[Sequence[Tensor] | None],
    group_scalars: Sequence[float] = (),
    tensor_scalars: Sequence[Sequence[float]] = (),
    flags: int = 0,
    written: Sequence[Sequence[Tensor] | None] = (),
    sums: Tensor | None = None,
) -> None:
    """Run fused kernel ``name`` over tensors of one dtype: ``lists`` parallel tensor lists
    (``None`` for an absent one), ``tensor_scalars`` per-tensor values, ``written`` the lists
    the kernel modifies (their autograd version counters are bumped, as an in-place op does),
    ``sums`` a zeroed contiguous float64 ``(len(lists[0]), NSUMS)`` tensor that reducing
    kernels add their per-tensor sums to."""
    lib = library()
    assert lib is not None, "launch() called without the fused library"
    first = next(c for c in lists if c is not None)
    nt = len(first)
    if nt == 0:
        return
    fn = getattr(lib, f"geoptim_{name}_{FUSED_DTYPES[first[0].dtype]}")
    # array.array builds the argument arrays about 6x faster than ctypes arrays do
    numel = array.array("q", [t.numel() for t in first])
    pointers = array.array("Q", [t.data_ptr() if c else 0 for c in lists for t in (c or first)])
    gs = array.array("d", [*group_scalars, 0.0])
    ts = array.array("d", [*(float(v) for column in tensor_scalars for v in column), 0.0])
    out = None if sums is None else sums.data_ptr()
    fn(nt, _address(numel), _address(pointers), _address(gs), _address(ts), flags, out,
       torch.get_num_threads())  # fmt: skip
    torch._C._increment_version([t for column in written for t in column or ()])


def _address(values: array.array) -> int:
    return values.buffer_info()[0]


def launch_by_dtype(
    name: str,
    lists: Sequence[Sequence[Tensor] | None],
    group_scalars: Sequence[float] = (),
    tensor_scalars: Sequence[Sequence[float]] = (),
    flags: int = 0,
    written: Sequence[int] = (),
    reduces: bool = False,
) -> Tensor | None:
    """:func:`launch` once per dtype present (``written``: indices into ``lists``); with
    ``reduces``, the kernel's per-tensor sums, a float64 ``(len(lists[0]), NSUMS)`` tensor in
    the order of the lists."""
    first = next(c for c in lists if c is not None)
    sums = torch.zeros(len(first), NSUMS, dtype=torch.float64) if reduces else None
    dtypes = dict.fromkeys(t.dtype for t in first)
    for dtype in dtypes:
        rows = [i for i, t in enumerate(first) if t.dtype == dtype]
        sub = [pick(c, rows) for c in lists] if len(dtypes) > 1 else list(lists)
        sub_sums = None if sums is None else sums if len(dtypes) == 1 else sums[rows]
        launch(
            name,
            sub,
            group_scalars,
            [pick(column, rows) for column in tensor_scalars],
            flags,
            [sub[k] for k in written],
            sub_sums,
        )
        if sub_sums is not None and sub_sums is not sums:
            sums[rows] = sub_sums
    return sums
