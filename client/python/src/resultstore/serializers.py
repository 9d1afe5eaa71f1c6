"""Prefect's serializers, reimplemented so a result written here is one Prefect wrote.

Each serializer's `dumps` gives the bytes Prefect 3's serializer of the same config gives
(the tests hold them to `prefect.serializers` byte for byte), and `config()` is the JSON
object Prefect writes into its records, key order and all:

- `json`: `json.dumps(obj, default=prefect_json_object_encoder)` as UTF-8, or the bytes of
  the `jsonlib` named (`orjson`). Values JSON cannot hold become Prefect's wrappers:
  `{"__class__": "module.Qualname", "data": ...}` (through pydantic, as Prefect does) and
  `{"__exc_type__": "module.Qualname", "message": ...}` for exceptions.
- `pickle`: `base64.encodebytes(cloudpickle.dumps(obj))` (or the `picklelib` named).
- `compressed`: `base64.encodebytes(<compressionlib>.compress(inner.dumps(obj)))`, lzma by
  default; `compressed/json` and `compressed/pickle` preset the inner serializer.

Like Prefect, `loads` imports the libraries and classes a config names (`picklelib`,
`compressionlib`, a JSON `__class__`): a config is trusted as much as the process that
reads it trusts its results. The *server* never does this; only clients do.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import json
from typing import Any, Callable, Optional, Union

__all__ = [
    "Serializer",
    "JSONSerializer",
    "PickleSerializer",
    "CompressedSerializer",
    "CompressedJSONSerializer",
    "CompressedPickleSerializer",
    "serializer_from",
    "prefect_json_object_encoder",
    "prefect_json_object_decoder",
]

DEFAULT_OBJECT_ENCODER = "prefect.serializers.prefect_json_object_encoder"
DEFAULT_OBJECT_DECODER = "prefect.serializers.prefect_json_object_decoder"


@functools.lru_cache(maxsize=256)
def from_qualified_name(name: str) -> Any:
    """Imports `module` or `module.attribute`, as Prefect's `from_qualified_name` does.
    Kept per name (an import is found once): serializers look up their library on every
    call, and the lookup cost more than loading a small value."""
    try:
        return importlib.import_module(name)
    except ImportError:
        if "." not in name:
            raise
    module, attr = name.rsplit(".", 1)
    return getattr(importlib.import_module(module), attr)


def to_qualified_name(obj: Any) -> str:
    return obj.__module__ + "." + obj.__qualname__


def _importable_class(cls: type) -> type:
    # Pydantic generic models (`Page[int]`) are named by their importable origin (`Page`).
    meta = getattr(cls, "__pydantic_generic_metadata__", None)
    if meta and meta.get("origin") is not None:
        return meta["origin"]
    return cls


def prefect_json_object_encoder(obj: Any) -> Any:
    """`default=` for `json.dumps`: Prefect 3's `prefect_json_object_encoder`, same output."""
    if isinstance(obj, BaseException):
        return {"__exc_type__": to_qualified_name(obj.__class__), "message": str(obj)}
    if isinstance(obj, io.IOBase):
        return {
            "__class__": to_qualified_name(obj.__class__),
            "data": (
                f"<Prefect IOStream Placeholder: type={obj.__class__.__name__}, "
                f"repr={repr(obj)} (original content not read)>"
            ),
        }
    from pydantic import BaseModel
    from pydantic_core import to_jsonable_python

    data = obj.model_dump(mode="json") if isinstance(obj, BaseModel) else to_jsonable_python(obj)
    return {"__class__": to_qualified_name(_importable_class(obj.__class__)), "data": data}


_ADAPTERS: dict = {}


def prefect_json_object_decoder(result: dict) -> Any:
    """`object_hook=` for `json.loads`: Prefect 3's `prefect_json_object_decoder`.

    Rebuilds `__class__` wrappers through pydantic (the dict is returned as is when the
    class cannot be imported here) and `__exc_type__` wrappers as the exception.
    """
    if "__class__" in result:
        name = result["__class__"]
        if name not in _ADAPTERS:
            try:
                cls = from_qualified_name(name)
            except (ImportError, AttributeError):
                return result
            from pydantic import TypeAdapter

            _ADAPTERS[name] = TypeAdapter(cls)
        return _ADAPTERS[name].validate_python(result["data"])
    if "__exc_type__" in result:
        try:
            exc_cls = from_qualified_name(result["__exc_type__"])
        except (ImportError, AttributeError):
            raise ValueError(f"Invalid exception type: {result['__exc_type__']!r}")
        if not (isinstance(exc_cls, type) and issubclass(exc_cls, BaseException)):
            raise ValueError(f"Invalid exception type: {result['__exc_type__']!r}")
        return exc_cls(result["message"])
    return result


_BUILTIN_HOOKS: dict = {
    DEFAULT_OBJECT_ENCODER: prefect_json_object_encoder,
    DEFAULT_OBJECT_DECODER: prefect_json_object_decoder,
}


def _hook(name: Optional[str]) -> Optional[Callable]:
    if name is None:
        return None
    # Prefect's own hooks are reimplemented here, so reading needs no Prefect install.
    return _BUILTIN_HOOKS.get(name) or from_qualified_name(name)


class Serializer:
    """A serializer: `dumps`/`loads` and the config Prefect records for it."""

    type: str = ""

    def dumps(self, obj: Any) -> bytes:
        raise NotImplementedError

    def loads(self, blob: bytes) -> Any:
        raise NotImplementedError

    def config(self) -> dict:
        """The config as Prefect writes it into a record's metadata."""
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Serializer) and self.config() == other.config()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config()!r})"


class PickleSerializer(Serializer):
    type = "pickle"

    def __init__(self, picklelib: str = "cloudpickle", picklelib_version: Optional[str] = None):
        self.picklelib = picklelib
        self.picklelib_version = picklelib_version

    def dumps(self, obj: Any) -> bytes:
        return base64.encodebytes(from_qualified_name(self.picklelib).dumps(obj))

    def loads(self, blob: bytes) -> Any:
        return self.loads_value(base64.decodebytes(blob))

    def loads_value(self, raw_pickle: bytes) -> Any:
        """Loads the pickle itself (what the server's Resolve returns)."""
        return from_qualified_name(self.picklelib).loads(raw_pickle)

    def load_value(self, file: Any) -> Any:
        """Loads the pickle itself from a binary file, a piece at a time (a large
        result's value bytes as they stream, never held whole)."""
        return from_qualified_name(self.picklelib).load(file)

    def config(self) -> dict:
        return {"type": self.type, "picklelib": self.picklelib, "picklelib_version": self.picklelib_version}


class JSONSerializer(Serializer):
    type = "json"

    def __init__(
        self,
        jsonlib: str = "json",
        object_encoder: Optional[str] = DEFAULT_OBJECT_ENCODER,
        object_decoder: Optional[str] = DEFAULT_OBJECT_DECODER,
        dumps_kwargs: Optional[dict] = None,
        loads_kwargs: Optional[dict] = None,
    ):
        if dumps_kwargs and "default" in dumps_kwargs:
            raise ValueError("`default` cannot be provided. Use `object_encoder` instead.")
        if loads_kwargs and "object_hook" in loads_kwargs:
            raise ValueError("`object_hook` cannot be provided. Use `object_decoder` instead.")
        self.jsonlib = jsonlib
        self.object_encoder = object_encoder
        self.object_decoder = object_decoder
        self.dumps_kwargs = dict(dumps_kwargs or {})
        self.loads_kwargs = dict(loads_kwargs or {})

    def dumps(self, obj: Any) -> bytes:
        lib = from_qualified_name(self.jsonlib)
        kwargs = dict(self.dumps_kwargs)
        encoder = _hook(self.object_encoder)
        if encoder is not None:
            kwargs["default"] = encoder
        out = lib.dumps(obj, **kwargs)
        return out.encode() if isinstance(out, str) else out

    def loads(self, blob: bytes) -> Any:
        lib = from_qualified_name(self.jsonlib)
        kwargs = dict(self.loads_kwargs)
        decoder = _hook(self.object_decoder)
        if decoder is not None:
            kwargs["object_hook"] = decoder
        if self.jsonlib == "orjson":
            # Prefect 3.9.1 passes object_hook to orjson.loads, which takes no keyword
            # arguments, so Prefect cannot read what orjson wrote; the stdlib reads it.
            return json.loads(blob.decode(), **kwargs)
        return lib.loads(blob.decode(), **kwargs)

    def config(self) -> dict:
        return {
            "type": self.type,
            "jsonlib": self.jsonlib,
            "object_encoder": self.object_encoder,
            "object_decoder": self.object_decoder,
            "dumps_kwargs": dict(self.dumps_kwargs),
            "loads_kwargs": dict(self.loads_kwargs),
        }


class CompressedSerializer(Serializer):
    type = "compressed"

    def __init__(self, serializer: Union[str, dict, Serializer], compressionlib: str = "lzma"):
        self.serializer = serializer_from(serializer)
        self.compressionlib = compressionlib

    def dumps(self, obj: Any) -> bytes:
        lib = from_qualified_name(self.compressionlib)
        return base64.encodebytes(lib.compress(self.serializer.dumps(obj)))

    def loads(self, blob: bytes) -> Any:
        lib = from_qualified_name(self.compressionlib)
        return self.serializer.loads(lib.decompress(base64.decodebytes(blob)))

    def config(self) -> dict:
        return {"type": self.type, "serializer": self.serializer.config(), "compressionlib": self.compressionlib}


class CompressedPickleSerializer(CompressedSerializer):
    type = "compressed/pickle"

    def __init__(self, serializer: Union[str, dict, Serializer, None] = None, compressionlib: str = "lzma"):
        super().__init__(serializer or PickleSerializer(), compressionlib)


class CompressedJSONSerializer(CompressedSerializer):
    type = "compressed/json"

    def __init__(self, serializer: Union[str, dict, Serializer, None] = None, compressionlib: str = "lzma"):
        super().__init__(serializer or JSONSerializer(), compressionlib)


_TYPES = {
    "json": JSONSerializer,
    "pickle": PickleSerializer,
    "compressed": CompressedSerializer,
    "compressed/json": CompressedJSONSerializer,
    "compressed/pickle": CompressedPickleSerializer,
}


def serializer_from(spec: Union[str, dict, Serializer, Any]) -> Serializer:
    """A serializer from a type name, a config dict, one of ours, or one of Prefect's.

    A Prefect serializer object (anything with `model_dump`) is taken by its config.
    """
    if isinstance(spec, Serializer):
        return spec
    if isinstance(spec, str):
        if spec == "compressed":
            raise ValueError('type "compressed" needs an inner serializer: give a config dict')
        try:
            return _TYPES[spec]()
        except KeyError:
            raise ValueError(f"unknown serializer type {spec!r}; known: {', '.join(_TYPES)}") from None
    if hasattr(spec, "model_dump"):
        spec = spec.model_dump(mode="json")
    if isinstance(spec, dict):
        options = dict(spec)
        type_ = options.pop("type", None)
        cls = _TYPES.get(type_)
        if cls is None:
            raise ValueError(f"unknown serializer type {type_!r}; known: {', '.join(_TYPES)}")
        return cls(**options)
    raise TypeError(f"a serializer is a type name, a config dict or a Serializer, not {type(spec).__name__}")
