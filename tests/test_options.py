"""Options: a misspelt one names the public call and suggests the right name, on every Python;
`lazycache.open()`'s options are typed, so that mypy rejects a misspelt one too."""

from __future__ import annotations

import inspect
import textwrap
from typing import Any

import pytest

import lazycache
from lazycache._open import OpenOptions
from lazycache.aio import async_implementation_class
from lazycache.cache import CacheOptions, _CacheLayer


def test_misspelt_option_names_the_class_and_suggests_the_option(cache_cls: type) -> None:
    with pytest.raises(TypeError) as raised:
        cache_cls(lazycache.MemoryStore(), max_size=10)
    assert str(raised.value) == (
        "LazyWriterCache() got an unexpected keyword argument 'max_size'; did you mean 'maxsize'?"
    )


def test_misspelt_option_of_the_async_class_names_it(impl: str) -> None:
    with pytest.raises(
        TypeError, match=r"^AsyncLazyWriterCache\(\) .* did you mean 'write_interval'"
    ):
        async_implementation_class(impl)(lazycache.MemoryStore(), write_intervall=1)


def test_unknown_option_without_a_close_name_lists_the_options(cache_cls: type) -> None:
    with pytest.raises(TypeError, match=r"'zzz' \(it takes: batch_size, .*write_interval\)$"):
        cache_cls(lazycache.MemoryStore(), zzz=1)


def test_store_by_keyword_is_accepted(cache_cls: type) -> None:
    cache = cache_cls(store=lazycache.MemoryStore(), maxsize=5)
    assert cache.maxsize == 5
    cache.close()


@pytest.mark.parametrize("args", [(), (lazycache.MemoryStore(), 10)], ids=["none", "two"])
def test_positional_options_are_refused_naming_the_class(
    cache_cls: type, args: tuple[Any, ...]
) -> None:
    with pytest.raises(
        TypeError, match=r"^LazyWriterCache\(\) takes the store as its one positional"
    ):
        cache_cls(*args)


def test_open_misspelt_option_raises_before_connecting(tmp_path: Any, impl: str) -> None:
    path = tmp_path / "never.db"
    with pytest.raises(TypeError) as raised:
        lazycache.open(f"sqlite:///{path}", implementation=impl, write_intervall=1)
    assert str(raised.value) == (
        "lazycache.open() got an unexpected keyword argument 'write_intervall'; "
        "did you mean 'write_interval'?"
    )
    assert not path.exists()  # refused before the store was made


def test_open_suggests_its_own_parameters(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="did you mean 'serializer'"):
        lazycache.open(f"sqlite:///{tmp_path / 'x.db'}", serialiser="pickle")  # type: ignore[call-overload]


def test_open_over_sql_refuses_a_redis_option(tmp_path: Any) -> None:
    with pytest.raises(TypeError, match="unexpected keyword argument 'ttl'"):
        lazycache.open(f"sqlite:///{tmp_path / 'x.db'}", ttl=5)


def test_typed_options_are_the_cache_options() -> None:
    """CacheOptions (what open() types) lists every LazyWriterCache option but the two it types apart."""
    init = inspect.signature(_CacheLayer.__init__).parameters
    keywords = {name for name, p in init.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(CacheOptions.__optional_keys__) == keywords - {"owns_store", "coherence"}
    assert "coherence" in OpenOptions.__optional_keys__


MISSPELT = """
    import lazycache
    from lazycache import LazyWriterCache, MemoryStore

    ok: LazyWriterCache[str, int] = lazycache.open("sqlite:///x.db", maxsize=10)
    keyed = lazycache.open("sqlite:///x.db", key_type=int)
    reveal_type(keyed)
    lazycache.open("sqlite:///x.db", write_intervall=1)
    lazycache.open("sqlite:///x.db", maxsize="10")
    LazyWriterCache(MemoryStore(), max_size=10)
"""


def test_mypy_rejects_misspelt_and_mistyped_options(tmp_path: Any) -> None:
    api = pytest.importorskip("mypy.api", reason="mypy is in the lint extra")
    source = tmp_path / "misspelt.py"
    source.write_text(textwrap.dedent(MISSPELT))
    out, err, status = api.run(
        ["--strict", "--no-error-summary", "--hide-error-context", "--no-pretty", str(source)]
    )
    errors = [line for line in out.splitlines() if ": error:" in line]
    lines = sorted({int(line.split(":")[1]) for line in errors})
    assert status == 1 and lines == [8, 9, 10], out + err
    assert 'Revealed type is "lazycache.cache.LazyWriterCache[int, Any]"' in out, out
    assert 'Unexpected keyword argument "write_intervall"' in out
    assert 'Unexpected keyword argument "max_size" for "LazyWriterCache"' in out
