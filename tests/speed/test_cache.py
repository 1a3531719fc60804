"""The fused-kernel cache loads only the user's own code (geoptim._compiled).

A "planted" library exports every kernel, so loading it would work, but its constructor writes a
marker file: the marker's absence proves it never ran in this process.
"""

import os
import pwd
import shlex
import shutil
import stat
import subprocess
import tempfile
import warnings
from pathlib import Path

import pytest
import torch

from geoptim import _compiled
from tests.optim.cases import CASES, make_params, run_steps

pytestmark = pytest.mark.skipif(
    shutil.which(os.environ.get("CC", "cc")) is None and shutil.which("gcc") is None,
    reason="needs a C compiler",
)

PLANTED = r"""
#include <stdio.h>
#include <stdlib.h>
__attribute__((constructor)) static void planted(void) {
    const char *marker = getenv("GEOPTIM_TEST_MARKER");
    FILE *f = marker ? fopen(marker, "w") : 0;
    if (f) fclose(f);
}
"""


def _cc(source: str, out) -> None:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    c_file = out.with_suffix(".c")
    c_file.write_text(source)
    command = [compiler, "-shared", "-fPIC", "-pthread", str(c_file), "-o", str(out), "-lm"]
    subprocess.run(command, check=True, capture_output=True)


@pytest.fixture(scope="module")
def libraries(tmp_path_factory):
    """``planted``: every kernel plus a marker-writing constructor; ``symbol_less``: a valid
    library without the kernels."""
    directory = tmp_path_factory.mktemp("libraries")
    _cc(_compiled.SOURCE + PLANTED, directory / "planted.so")
    _cc("int geoptim_nothing;\n", directory / "symbol_less.so")
    return directory


@pytest.fixture
def fresh(monkeypatch, tmp_path):
    """A process that has not loaded the library yet, caching in ``tmp_path/cache``; the
    planted constructor would write ``tmp_path/marker``."""
    monkeypatch.setattr(_compiled, "_library", None)
    monkeypatch.setattr(_compiled, "_tried", False)
    monkeypatch.setenv("GEOPTIM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("GEOPTIM_TEST_MARKER", str(tmp_path / "marker"))
    monkeypatch.delenv("GEOPTIM_NO_BUILD", raising=False)
    return tmp_path / "cache"


def _nobody() -> pwd.struct_passwd:
    if os.geteuid() != 0:
        pytest.skip("needs root to create files of another user")
    try:
        return pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody'")


def _load():
    """The library and the messages of the warnings loading it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lib = _compiled.library()
    return lib, [str(w.message) for w in caught]


def _assert_reference_result(name: str = "sepnorm_tensor") -> None:
    """``fused=True`` steps give the single-tensor reference's parameters, with no further
    warning about the library."""
    results = []
    for kw in ({"foreach": False}, {"fused": True}):
        params = make_params(torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run_steps(CASES[name](params, **kw), params, range(1, 4))
        assert not [w for w in caught if "fused kernels" in str(w.message)]
        results.append(params)
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def _private_cache(cache) -> os.stat_result:
    info = os.lstat(cache / _compiled.library_name())
    assert stat.S_ISREG(info.st_mode) and info.st_uid == os.geteuid()
    assert not info.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    return info


def test_builds_into_a_private_cache_and_reuses_it(fresh, monkeypatch):
    lib, messages = _load()
    assert lib is not None and messages == []
    assert stat.S_IMODE(os.stat(fresh).st_mode) == 0o700
    _private_cache(fresh)
    # A second process loads the cached library without compiling.
    monkeypatch.setattr(_compiled, "_library", None)
    monkeypatch.setattr(_compiled, "_tried", False)
    monkeypatch.setattr(_compiled, "_compile", lambda _: pytest.fail("compiled again"))
    lib, messages = _load()
    assert lib is not None and messages == []
    _assert_reference_result()


def test_library_planted_by_another_user_is_never_loaded(fresh, libraries, tmp_path):
    nobody = _nobody()
    fresh.mkdir(mode=0o700)
    target = fresh / _compiled.library_name()
    shutil.copy(libraries / "planted.so", target)
    os.chown(target, nobody.pw_uid, nobody.pw_gid)
    planted = os.stat(target)
    lib, messages = _load()
    assert not (tmp_path / "marker").exists()
    assert lib is not None
    assert len(messages) == 1 and f"owned by uid {nobody.pw_uid}" in messages[0]
    assert _private_cache(fresh).st_ino != planted.st_ino  # replaced by a fresh build
    _assert_reference_result()


@pytest.fixture
def shared_temp_dir(monkeypatch):
    """A sticky world-writable directory outside pytest's private ``tmp_path`` (so that other
    users can reach it), used as the temporary directory."""
    shared = Path(tempfile.mkdtemp(prefix="geoptim-shared-"))
    shared.chmod(0o1777)
    monkeypatch.setattr("tempfile.tempdir", str(shared))
    yield shared
    shutil.rmtree(shared)


def _plant_as_nobody(library, targets) -> None:
    """Copy ``library`` to each target, creating its directory (mode 0777) if needed, as user
    ``nobody``: with ``setpriv`` where available, else as root and then ``chown``."""
    nobody = _nobody()
    if shutil.which("setpriv"):
        readable = targets[0].parent / "planted-source.so"
        shutil.copy(library, readable)
        readable.chmod(0o644)
        script = " && ".join(
            f"mkdir -p -m 777 {shlex.quote(str(t.parent))} && "
            f"cp {shlex.quote(str(readable))} {shlex.quote(str(t))}"
            for t in targets
        )
        user = [f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        subprocess.run(["setpriv", *user, "sh", "-c", script], check=True)
        readable.unlink()
    else:
        for target in targets:
            if not target.parent.exists():
                target.parent.mkdir(mode=0o777)
                os.chown(target.parent, nobody.pw_uid, nobody.pw_gid)
            shutil.copy(library, target)
            os.chown(target, nobody.pw_uid, nobody.pw_gid)
    assert all(os.stat(t).st_uid == nobody.pw_uid for t in targets)


def test_the_shared_temp_dir_is_never_trusted(
    fresh, libraries, tmp_path, monkeypatch, shared_temp_dir
):
    """No usable home: the cache is ``geoptim-<uid>`` in the temporary directory, and one
    another user made there first is refused; the old shared name is never looked at."""
    monkeypatch.delenv("GEOPTIM_CACHE")
    (tmp_path / "home").write_text("a file, so no cache directory can be made under it")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    name = _compiled.library_name()
    squatted = shared_temp_dir / f"geoptim-{os.geteuid()}"
    _plant_as_nobody(libraries / "planted.so", [shared_temp_dir / name, squatted / name])
    lib, messages = _load()
    assert not (tmp_path / "marker").exists()
    assert lib is not None  # built for this process alone
    assert len(messages) == 1 and f"cache directory {squatted} refused" in messages[0]
    assert os.listdir(squatted) == [name]  # untouched
    _assert_reference_result()


def test_uses_a_private_directory_in_the_temp_dir_without_a_home(fresh, tmp_path, monkeypatch):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    monkeypatch.delenv("GEOPTIM_CACHE")
    (tmp_path / "home").write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "home"))
    lib, messages = _load()
    assert lib is not None and messages == []
    private = tmp_path / f"geoptim-{os.geteuid()}"
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o700
    _private_cache(private)


@pytest.mark.parametrize("mode", [0o620, 0o602], ids=["group", "world"])
def test_group_or_world_writable_library_is_not_loaded(fresh, libraries, tmp_path, mode):
    fresh.mkdir(mode=0o700)
    target = fresh / _compiled.library_name()
    shutil.copy(libraries / "planted.so", target)
    target.chmod(mode)
    lib, messages = _load()
    assert not (tmp_path / "marker").exists()
    assert lib is not None and len(messages) == 1 and "writable" in messages[0]
    _private_cache(fresh)


def test_symbolic_link_is_not_loaded(fresh, libraries, tmp_path):
    fresh.mkdir(mode=0o700)
    (fresh / _compiled.library_name()).symlink_to(libraries / "planted.so")
    lib, messages = _load()
    assert not (tmp_path / "marker").exists()
    assert lib is not None and len(messages) == 1 and "not used" in messages[0]
    _private_cache(fresh)  # the link is replaced by a regular file


@pytest.mark.parametrize("owner", ["group-writable", "other user"])
def test_unsafe_cache_directory_is_refused(fresh, libraries, tmp_path, owner):
    fresh.mkdir()
    shutil.copy(libraries / "planted.so", fresh / _compiled.library_name())
    if owner == "other user":
        nobody = _nobody()
        fresh.chmod(0o755)
        os.chown(fresh, nobody.pw_uid, nobody.pw_gid)
    else:
        fresh.chmod(0o770)
    lib, messages = _load()
    assert not (tmp_path / "marker").exists()
    assert lib is not None and len(messages) == 1 and "refused" in messages[0]
    assert os.listdir(fresh) == [_compiled.library_name()]  # nothing written there
    _assert_reference_result()


@pytest.mark.parametrize("corrupt", ["garbage", "symbol_less"])
def test_corrupt_library_falls_back_with_one_warning(fresh, libraries, monkeypatch, corrupt):
    """With building disabled, a corrupt cached library leaves the multi-tensor path, with
    the reference's results; with building allowed, it is rebuilt."""
    fresh.mkdir(mode=0o700)
    target = fresh / _compiled.library_name()
    if corrupt == "garbage":
        target.write_bytes(b"\x7fELF not really a library" * 40)
    else:
        shutil.copy(libraries / "symbol_less.so", target)
    monkeypatch.setenv("GEOPTIM_NO_BUILD", "1")
    lib, messages = _load()
    assert lib is None
    assert len(messages) == 1 and "GEOPTIM_NO_BUILD=1" in messages[0]
    assert "multi-tensor path" in messages[0]
    _assert_reference_result()
    for name in ("adan_noprox_clip", "adamw_agr", "lpsgdm_p6", "ortsepnorm_global"):
        _assert_reference_result(name)

    monkeypatch.delenv("GEOPTIM_NO_BUILD")
    monkeypatch.setattr(_compiled, "_library", None)
    monkeypatch.setattr(_compiled, "_tried", False)
    lib, messages = _load()
    assert lib is not None and len(messages) == 1 and "not used" in messages[0]
    _assert_reference_result()


def test_no_build_switch_never_runs_the_compiler(fresh, monkeypatch):
    monkeypatch.setenv("GEOPTIM_NO_BUILD", "1")
    monkeypatch.setattr(_compiled, "_compile", lambda _: pytest.fail("compiler run"))
    lib, messages = _load()
    assert lib is None and len(messages) == 1
    assert os.listdir(fresh) == []
