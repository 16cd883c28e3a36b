"""Which core is active, and that the compiled one really serves the hot dict methods."""
from __future__ import annotations

import importlib
import importlib.machinery
import types

import pytest
from helpers import HOT_METHODS, NO_EXTENSIONS, require_implementation

import lazycache
from lazycache import _core_py
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
    assert compiled_core.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), compiled_core.__file__


def test_compiled_getitem_is_a_c_slot_wrapper(compiled_core: types.ModuleType) -> None:
    getitem = vars(compiled_core.Core)["__getitem__"]
    assert isinstance(getitem, types.WrapperDescriptorType), type(getitem)
    assert not isinstance(getitem, types.FunctionType)


@pytest.mark.parametrize("name", HOT_METHODS)
def test_compiled_core_serves_hot_method(compiled_core: types.ModuleType, name: str) -> None:
    cls = implementation_class("cython")
    owner = first_definer(cls, name)
    assert owner is compiled_core.Core, f"{name} is served by {owner.__qualname__}, not the compiled core"
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
