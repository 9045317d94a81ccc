"""Unpickling that cannot run code or build more than the pickle's own size: the one
piece shared by the CIFAR-10 reader (``cnnkit.data.cifar``) and the PyTorch ``.pth``
reader (``cnnkit.interop.pth``); each keeps its own allow-list and error type.

Two guards. ``RestrictedUnpickler`` resolves only the globals of its ``allowed`` table,
each mapped to an inert stand-in, so a ``__reduce__`` payload is refused before anything
is called. ``walk`` turns the unpickled structure into plain data: it converts each
shared object once (a memo by identity, so a list referenced twice stays one list) and
counts the size the structure would have if every reference were a copy. A pickle
cannot spell more than one object per byte without sharing (every object and every
element needs an opcode), so an expanded size over the pickle's length means references
nested on references (40 lists each holding the previous one twice expand to 2**40) and
is refused at once; so are cycles and nesting deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import pickle
from typing import Any, Callable, Mapping

MAX_DEPTH = 100  # a state dict nests 2 or 3 deep, a CIFAR batch 2; deeper is not data


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle.Unpickler whose find_class resolves only ``allowed``; subclasses name the error."""

    #: (module, name) -> the stand-in the pickle gets instead of the real global
    allowed: Mapping[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        target = self.allowed.get((module, name))
        if target is None:
            raise self.refuse_global(module, name)
        return self.resolve(target)

    def resolve(self, target: Any) -> Any:
        """The object the pickle receives for an allowed global (default: the stand-in itself)."""
        return target

    def refuse_global(self, module: str, name: str) -> Exception:
        """The error raised for a global outside the allow-list."""
        return pickle.UnpicklingError(f"pickle refers to {module}.{name}, which is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("pickle uses persistent ids, which are not allowed")


def walk(root: Any, leaf: Callable[[Any], Any], limit: int, error: Callable[[str], Exception],
         max_depth: int = MAX_DEPTH) -> Any:
    """root with dicts, lists and tuples rebuilt and every other object replaced by leaf(obj).

    Shared containers are converted once and stay shared (the memo). Refused with
    error(message): an expanded size (every reference counted as a copy) over limit, a
    container that contains itself, nesting deeper than max_depth. Dict keys are kept.
    Time and memory are linear in the number of distinct objects."""
    done: dict[int, tuple[Any, int]] = {}   # id -> (converted, expanded size)
    active: set[int] = set()

    def visit(obj: Any, depth: int) -> tuple[Any, int]:
        if not isinstance(obj, (dict, list, tuple)):
            return leaf(obj), 1
        key = id(obj)   # root keeps every object alive, so ids stay unique during the walk
        if key in done:
            return done[key]
        if key in active:
            raise error("a container in it contains itself")
        if depth > max_depth:
            raise error(f"nests containers more than {max_depth} deep")
        active.add(key)
        size = 1
        items = obj.items() if isinstance(obj, dict) else enumerate(obj)
        out: dict[Any, Any] = {}
        for k, v in items:
            out[k], n = visit(v, depth + 1)
            size += n + isinstance(obj, dict)
            if size > limit:
                raise error(f"nests shared objects far beyond its own size (over {limit:,} objects "
                            "if expanded); refused")
        active.discard(key)
        result: Any = out if isinstance(obj, dict) else list(out.values()) if isinstance(obj, list) \
            else tuple(out.values())
        done[key] = (result, size)
        return result, size

    return visit(root, 0)[0]
