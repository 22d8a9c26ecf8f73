"""Sequential specifications the linearizability checker compares a history against.

A model has a hashable state and `step(state, op) -> (ok, new_state)`. For speed the checker
asks the model to `compile` each operation once into a function `state -> new_state | FAIL`, so
the inner search loop makes one call per step and allocates nothing.

Models also say how a history splits into independent parts (P-compositionality: a kv history is
linearizable iff each key's sub-history is) and which operations may be dropped while shrinking a
counterexample without inventing an anomaly that was not there.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from typing import Any

from kalamdb.chaos.history import Operation


class _Fail:
    __slots__ = ()

    def __repr__(self) -> str:
        return "FAIL"


FAIL: Any = _Fail()

Stepper = Callable[[Any], Any]


class Model:
    """Base class; subclasses define `init_state`, `compile` and the helpers below."""

    name = "model"
    functions: frozenset[str] = frozenset()
    read_functions: frozenset[str] = frozenset()

    def init_state(self) -> Any:
        raise NotImplementedError

    def compile(self, op: Operation) -> Stepper:
        raise NotImplementedError

    def step(self, state: Any, op: Operation) -> tuple[bool, Any]:
        """The readable form of the specification: may `op` happen in `state`, and what follows?"""
        new = self.compile(op)(state)
        return (False, state) if new is FAIL else (True, new)

    def validate(self, op: Operation) -> str | None:
        """Why `op` can never be checked against this model (None when it can)."""
        if op.f not in self.functions:
            return f"function :{op.f} is not part of the {self.name} model ({', '.join(sorted(self.functions))})"
        return None

    def partition(self, ops: list[Operation]) -> list[tuple[Any, list[Operation]]]:
        """Independent sub-histories, each checked on its own: here, one per key."""
        groups: dict[Any, list[Operation]] = defaultdict(list)
        for op in ops:
            groups[op.key].append(op)
        return sorted(groups.items(), key=lambda kv: (len(kv[1]), str(kv[0])))

    blind_functions: frozenset[str] = frozenset()

    def is_read_only(self, op: Operation) -> bool:
        return op.f in self.read_functions

    def is_blind(self, op: Operation) -> bool:
        """Does `op` set the state without looking at it (so whatever came just before is
        overwritten unseen)?"""
        return op.f in self.blind_functions

    def removal_closure(self, op: Operation, ops: list[Operation]) -> list[Operation] | None:
        """The operations to drop together with `op` so that what remains of a non-linearizable
        history is still a genuine witness: any linearization of the whole, minus them, must be a
        linearization of the rest. None when the model knows no such set. Reads are always safe."""
        return [op] if self.is_read_only(op) else None

    def describe_state(self, state: Any) -> str:
        return "nil" if state is None else repr(state)


class RegisterModel(Model):
    """One register per key: read, write, cas [expected new]; initially nil.

    An indeterminate write may or may not have happened; an indeterminate cas applies if the
    register holds `expected` and is otherwise a no-op. A cas that returned `fail` was dropped when
    the history was paired (it definitely did not happen)."""

    name = "register"
    functions = frozenset({"read", "write", "cas"})
    read_functions = frozenset({"read"})
    blind_functions = frozenset({"write"})

    def init_state(self) -> Any:
        return None

    def validate(self, op: Operation) -> str | None:
        why = super().validate(op)
        if why is None and op.f == "cas" and not (isinstance(op.value, (list, tuple)) and len(op.value) == 2):
            why = f"cas needs [expected new], got {op.value!r}"
        return why

    def compile(self, op: Operation) -> Stepper:
        f = op.f
        if f == "read":
            if op.ret is None:
                return lambda s: s
            want = op.output

            def read(s: Any) -> Any:
                return s if s == want else FAIL

            return read
        if f == "write":
            value = op.value
            return lambda s: value
        if f == "cas":
            expected, new = op.value
            if op.ret is None:
                return lambda s: new if s == expected else s

            def cas(s: Any) -> Any:
                return new if s == expected else FAIL

            return cas
        raise ValueError(self.validate(op))

    def removal_closure(self, op: Operation, ops: list[Operation]) -> list[Operation] | None:
        """`op` plus every operation that observes a value written by something in the set
        (reads returning it, cas expecting it), to a fixpoint: in any linearization the rest then
        sees exactly the states it saw before."""
        if op.f == "read":
            return [op]
        closure = {op.id: op}
        todo = [op]
        while todo:
            cur = todo.pop()
            if cur.f == "read":
                continue
            written = cur.value if cur.f == "write" else cur.value[1]
            for other in ops:
                if other.id in closure:
                    continue
                if (other.f == "read" and other.output == written) or (
                    other.f == "cas" and other.value[0] == written
                ):
                    closure[other.id] = other
                    todo.append(other)
        return list(closure.values())


class KVModel(Model):
    """A map from key to string, initially "" everywhere: get, put, append.

    Checked per key (P-compositionality), so a part's state is just that key's string."""

    name = "kv"
    functions = frozenset({"get", "put", "append"})
    read_functions = frozenset({"get"})
    blind_functions = frozenset({"put"})

    def init_state(self) -> Any:
        return ""

    def validate(self, op: Operation) -> str | None:
        why = super().validate(op)
        if why is None and op.f != "get" and not isinstance(op.value, str):
            why = f":{op.f} needs a string value, got {op.value!r}"
        return why

    def compile(self, op: Operation) -> Stepper:
        f = op.f
        if f == "get":
            if op.ret is None:
                return lambda s: s
            want = "" if op.output is None else op.output

            def get(s: Any) -> Any:
                return s if s == want else FAIL

            return get
        if f == "put":
            value = op.value
            return lambda s: value
        if f == "append":
            suffix = op.value
            return lambda s: s + suffix
        raise ValueError(self.validate(op))

    def removal_closure(self, op: Operation, ops: list[Operation]) -> list[Operation] | None:
        """A put or append goes with every get that may come after it in real time; gets that
        returned before it was called never saw it, and other writes observe nothing."""
        if op.f == "get":
            return [op]
        return [op] + [o for o in ops if o.f == "get" and o.id != op.id and o.ret is not None and o.ret > op.call]

    def describe_state(self, state: Any) -> str:
        return repr(state)


MODELS: dict[str, Model] = {"register": RegisterModel(), "kv": KVModel()}


def model_for(name: str) -> Model:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def guess_model(ops: list[Operation]) -> Model:
    """kv when the history speaks get/put/append, register otherwise."""
    if any(op.f in KVModel.functions for op in ops):
        return MODELS["kv"]
    return MODELS["register"]
