"""Which core is active, and that the compiled one really serves the hot dict methods."""

from __future__ import annotations

import importlib
import importlib.machinery
import os
import pathlib
import subprocess
import sys
import threading
import types

import pytest
from helpers import HOT_METHODS, NO_EXTENSIONS, require_implementation

import lazycache
from lazycache import _compat, _core_common, _core_py
from lazycache.cache import implementation_class


@pytest.fixture(scope="module")
def compiled_core() -> types.ModuleType:
    require_implementation("cython")  # skips under LAZYCACHE_NO_EXTENSIONS, fails if not importable
    return importlib.import_module("lazycache._core")


def first_definer(cls: type, name: str) -> type:
    return next(klass for klass in cls.__mro__ if name in vars(klass))


def test_compiled_core_is_the_active_implementation() -> None:
    expected = "python" if NO_EXTENSIONS else "cython"
    assert lazycache.IMPLEMENTATION == expected
    assert lazycache.LazyWriterCache is implementation_class(expected)


def test_compiled_core_is_an_extension_module(compiled_core: types.ModuleType) -> None:
    assert compiled_core.__file__ is not None
    assert compiled_core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), (
        compiled_core.__file__
    )


def test_compiled_getitem_is_a_c_slot_wrapper(compiled_core: types.ModuleType) -> None:
    getitem = vars(compiled_core.Core)["__getitem__"]
    assert isinstance(getitem, types.WrapperDescriptorType), type(getitem)
    assert not isinstance(getitem, types.FunctionType)


@pytest.mark.parametrize("name", HOT_METHODS)
def test_compiled_core_serves_hot_method(compiled_core: types.ModuleType, name: str) -> None:
    cls = implementation_class("cython")
    owner = first_definer(cls, name)
    assert owner is compiled_core.Core, (
        f"{name} is served by {owner.__qualname__}, not the compiled core"
    )
    assert not isinstance(vars(owner)[name], types.FunctionType), f"{name} is a Python function"


@pytest.mark.parametrize("name", HOT_METHODS)
def test_python_layer_does_not_shadow_hot_method(cache_cls: type, impl: str, name: str) -> None:
    core = _core_py.Core if impl == "python" else importlib.import_module("lazycache._core").Core
    assert first_definer(cache_cls, name) is core


def test_class_says_which_core_it_is_built_on(cache_cls: type, impl: str) -> None:
    assert cache_cls.implementation == impl
    assert cache_cls.__name__ == "LazyWriterCache"


def test_unknown_implementation_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="no 'rust' core"):
        implementation_class("rust")


# Runs in a fresh interpreter: the switch is read when the compiled module is imported.
LOCK_PROBE = """
import threading
import lazycache._core as core

assert core.LOCKS_EVERY_OPERATION, "LAZYCACHE_FORCE_LOCKING was ignored"
c = core.Core()
c["k"] = 1
holder_has_lock, done = threading.Event(), threading.Event()

def hold():
    c._fork_prepare()  # takes the core's lock, as a free-threaded build's readers would find it
    holder_has_lock.set()
    done.wait()
    c._fork_release()

def read():
    assert c["k"] == 1
    done.set()

holder = threading.Thread(target=hold)
holder.start()
holder_has_lock.wait()
reader = threading.Thread(target=read)
reader.start()
reader.join(0.3)
assert reader.is_alive(), "a read of a str key did not wait for the lock"
done.set()
holder.join()
reader.join()
"""


def test_forced_locking_makes_even_builtin_key_reads_wait_for_the_lock(
    compiled_core: types.ModuleType,
) -> None:
    """LAZYCACHE_FORCE_LOCKING=1 gives a GIL build the free-threaded build's locking."""
    env = {**os.environ, "LAZYCACHE_FORCE_LOCKING": "1"}
    subprocess.run([sys.executable, "-c", LOCK_PROBE], env=env, check=True, timeout=60)


def test_builtin_key_reads_do_not_wait_for_the_lock(compiled_core: types.ModuleType) -> None:
    if compiled_core.LOCKS_EVERY_OPERATION:
        pytest.skip("this core locks every operation (free-threaded, line-traced or forced)")
    core = compiled_core.Core()
    core["k"] = 1
    core._fork_prepare()
    try:
        reader = threading.Thread(target=core.__getitem__, args=("k",))
        reader.start()
        reader.join(30)
        assert not reader.is_alive()
    finally:
        core._fork_release()


def test_the_core_suite_passes_with_every_operation_locked(compiled_core: types.ModuleType) -> None:
    """The locked paths alone are complete: what a free-threaded build runs, checked on this one."""
    env = {**os.environ, "LAZYCACHE_FORCE_LOCKING": "1"}
    here = pathlib.Path(__file__).parent
    files = ["test_mapping.py", "test_threads.py", "test_stateful.py", "test_eviction.py"]
    files += ["test_update_entry.py", "test_deletes.py", "test_flush.py"]
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "compiled"]
        + [str(here / name) for name in files],
        env=env,
        cwd=here.parent,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout


def test_both_cores_signal_and_refuse_with_what_they_share(impl: str) -> None:
    """The signal bits and Full come from lazycache._core_common, for both cores (the compiled
    one copies the bits into C ints at import: a wrong copy would wake the wrong thread)."""

    class Probe(_compat.CORES[impl]):
        def __init__(self) -> None:
            super().__init__(maxsize=1, write_threshold=2, max_pending=2)
            self.signals: list[int] = []

        def _wake(self, signal: int) -> None:
            self.signals.append(signal)

    core = Probe()
    core._put("a", 1)
    core._put("b", 2)  # a second entry: past maxsize, and the write threshold reached
    assert core.signals and all(
        s & ~(_core_common.SIGNAL_PRUNE | _core_common.SIGNAL_WRITE) == 0 for s in core.signals
    ), core.signals
    raised = 0
    for signal in core.signals:
        raised |= signal
    assert raised == _core_common.SIGNAL_PRUNE | _core_common.SIGNAL_WRITE
    with pytest.raises(_core_common.Full):
        core._put("c", 3)  # a third pending entry, beyond max_pending
    assert len(core) == 2
