"""Linearizability checking: the Wing & Gong / Lowe (WGL) search as Porcupine implements it.

The history becomes a doubly linked list of call and return entries in time order. The search
walks it from the front: at a call entry it tries to linearize that operation now (the model must
accept it, and the pair (set of linearized operations, model state) must be new — the memo that
makes WGL practical); at a return entry whose operation is not yet linearized it is stuck and
backtracks. Linearized operations are unlinked (dancing links), so each step looks only at
operations still open. Operations are ints, the linearized set is one int used as a bitset.

Indeterminate operations return "at infinity": they may be linearized anywhere after their call or
never (placing one after everything else is the same as leaving it out), so the search succeeds
as soon as every determinate operation is linearized.

The history is split into independent parts first (P-compositionality, per key), and every part
is checked under one deadline and one state budget: the verdict is UNKNOWN rather than a hang or an
exhausted memory.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from kalamdb.chaos.history import Operation, renumber
from kalamdb.chaos.models import FAIL, Model

DEFAULT_MAX_STATES = 2_000_000
# memoized search states are the memory cost; bound their estimated total size too
DEFAULT_MAX_CACHE_BYTES = 512 * 1024 * 1024
MINIMIZE_MAX_STATES = 50_000  # per trial while shrinking a counterexample
_CHECK_EVERY = 2048  # loop iterations between deadline checks
# a memo entry is a small tuple in a set: tracemalloc measured 115-151 bytes per state (peak)
# on the etcd vectors, the kv vectors and 10k-operation histories; budget with some headroom
_BYTES_PER_STATE = 200


class Verdict(enum.Enum):
    LINEARIZABLE = "LINEARIZABLE"
    NOT_LINEARIZABLE = "NOT_LINEARIZABLE"
    UNKNOWN = "UNKNOWN"


@dataclass
class Counterexample:
    """Why a history is not linearizable.

    `ops` is a sub-history that is itself not linearizable and is (when `minimal`) 1-minimal:
    dropping any one of its droppable operations makes it linearizable. `failed_op` is the
    operation whose return the search could never get past. `linearized` is the longest
    linearizable prefix found (operations in linearization order) and `state` the model state
    after it."""

    partition: Any
    failed_op: Operation
    ops: list[Operation]
    minimal: bool
    linearized: list[Operation]
    state: Any
    model: Model

    def format(self) -> str:
        lines = []
        if self.partition is not None:
            lines.append(f"key {self.partition!r}:")
        lines.append(f"cannot linearize: {self.failed_op.describe()}")
        kind = "minimal" if self.minimal else "reduced (minimization budget ran out)"
        lines.append(f"{kind} non-linearizable sub-history ({len(self.ops)} ops):")
        lines.extend("  " + op.describe() for op in sorted(self.ops, key=lambda o: o.call))
        lines.append(
            f"longest linearizable prefix: {len(self.linearized)} ops, "
            f"state after it {self.model.describe_state(self.state)}"
        )
        tail = self.linearized[-5:]
        if len(self.linearized) > len(tail):
            lines.append("  ...")
        lines.extend("  " + op.describe() for op in tail)
        return "\n".join(lines)


@dataclass
class CheckResult:
    verdict: Verdict
    counterexample: Counterexample | None = None
    reason: str = ""
    states: int = 0
    elapsed: float = 0.0
    partitions: int = 0
    operations: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def linearizable(self) -> bool:
        return self.verdict is Verdict.LINEARIZABLE

    def summary(self) -> str:
        head = (
            f"{self.verdict.value}: {self.operations} operations in {self.partitions} "
            f"part(s), {self.states} states, {self.elapsed:.3f}s"
        )
        return head + (f" ({self.reason})" if self.reason else "")


class _Budget:
    def __init__(self, deadline: float | None, max_states: int, max_cache_bytes: int):
        self.deadline = deadline
        self.max_states = max_states
        self.max_cache_bytes = max_cache_bytes
        self.states = 0
        self.exhausted = ""


@dataclass
class _Search:
    ok: bool | None  # None: budget ran out
    stuck_at: int  # op whose return the search never passed (-1 when ok)
    path: list[int]  # longest linearized sequence (op indices)
    path_state: Any
    states: int


def _wgl(ops: list[Operation], model: Model, budget: _Budget, record: bool) -> _Search:
    """One WGL search over ops with ids 0..n-1 in call order; `record` keeps the deepest path.

    A search state is (base, window, kinds, must_observe, state): `base` is the lowest determinate operation not
    yet linearized (all below it are), `window` the linearized determinate operations above it as
    a bitset, `kinds` how many indeterminate operations of each kind are linearized (packed). The bitset
    spans only the operations concurrent with the search front, so keys stay a few words long
    and every update is O(1) even in a 10,000-operation history."""
    n = len(ops)
    steppers = [model.compile(op) for op in ops]
    # Open indeterminate operations with the same function and input are interchangeable (all
    # called already, all return at infinity), so only the earliest-called one not yet
    # linearized is ever tried: the linearized ones of a kind always form a prefix, counted in
    # `kinds`, and the search never permutes identical timed-out writes.
    kind_of = [-1] * n
    same_before = [-1] * n
    dense = [-1] * n  # determinate ops numbered 0..d-1 in call order: their bit in the window
    kind_ids: dict[tuple, int] = {}
    last_of_kind: dict[int, int] = {}
    per_kind: list[int] = []
    remaining = 0
    for i, operation in enumerate(ops):
        if operation.ret is None:
            k = kind_ids.setdefault((operation.f, repr(operation.value)), len(kind_ids))
            if k == len(per_kind):
                per_kind.append(0)
            per_kind[k] += 1
            kind_of[i] = k
            same_before[i] = last_of_kind.get(k, -1)
            last_of_kind[k] = i
        else:
            dense[i] = remaining
            remaining += 1
    # `kinds` packs every kind's count into one int, a field per kind wide enough for all its ops
    # plus a guard bit on top, so "a <= b in every field" is one subtraction (SWAR): no field
    # borrows iff ((b | guards) - a) keeps every guard bit.
    kind_unit = []
    guards = 0
    offset = 0
    for count in per_kind:
        kind_unit.append(1 << offset)
        offset += count.bit_length()
        guards |= 1 << offset
        offset += 1
    if remaining == 0:
        return _Search(True, -1, [], model.init_state(), 0)
    # An indeterminate op only matters if the next op linearized looks at the state: one followed
    # by a blind write (or by nothing) can be dropped from any linearization. So after an
    # indeterminate op the search allows only an observing op next (`must_observe`).
    blind = [model.is_blind(op) for op in ops]
    done = bytearray(n)
    # entries: call of op i = 2i, its return = 2i+1; head sentinel = 2n; -1 = end of list
    keyed: list[tuple[float, int, int]] = []
    inf = float("inf")
    for i, operation in enumerate(ops):
        keyed.append((operation.call, 0, 2 * i))
        keyed.append((inf if operation.ret is None else operation.ret, 1, 2 * i + 1))
    keyed.sort()
    head = 2 * n
    nxt = [-1] * (2 * n + 1)
    prv = [-1] * (2 * n + 1)
    pos = [0] * (2 * n + 1)
    last = head
    for p, (_, _, e) in enumerate(keyed):
        nxt[last] = e
        prv[e] = last
        pos[e] = p
        last = e

    max_states = min(budget.max_states - budget.states, budget.max_cache_bytes // _BYTES_PER_STATE)
    deadline = budget.deadline
    state = model.init_state()
    base = 0
    window = 0
    kinds = 0
    must_observe = False
    # memo with subsumption: (base, window, state) -> [(kinds, must_observe), ...]. A search
    # that used no more of each indeterminate kind and is no more restricted has more options, so
    # if it was already visited a new one is pruned (it has no completion the other lacks).
    cache: dict = {}
    n_states = 0
    stack: list[tuple] = []
    best_pos = -1
    best_path: list[int] = []
    best_state = state
    entry = nxt[head]
    ticks = 0
    while True:
        if entry & 1 == 0:  # a call: try to linearize its operation here
            op = entry >> 1
            k = kind_of[op]
            if k >= 0:
                earlier = same_before[op]
                if earlier >= 0 and not done[earlier]:
                    entry = nxt[entry]
                    continue
            if must_observe and blind[op]:
                entry = nxt[entry]
                continue
            new = steppers[op](state)
            if new is not FAIL:
                if k < 0:
                    nb = base
                    nw = window | (1 << (dense[op] - base))
                    if nw & 1:  # the base moved: skip past the run of linearized ops
                        t = (~nw & (nw + 1)).bit_length() - 1
                        nw >>= t
                        nb += t
                    nk = kinds
                else:
                    nb, nw = base, window
                    nk = kinds + kind_unit[k]
                key = (nb, nw, new)
                seen = cache.get(key)
                observe = k >= 0
                if seen is None:
                    cache[key] = [(nk, observe)]
                    fresh = True
                else:
                    fresh = True
                    for ok_kinds, ok_observe in seen:
                        if ((nk | guards) - ok_kinds) & guards == guards and (observe or not ok_observe):
                            fresh = False
                            break
                    if fresh:
                        seen.append((nk, observe))
                if fresh:
                    n_states += 1
                    if n_states > max_states:
                        budget.states += n_states
                        budget.exhausted = f"state budget of {max_states} states exhausted"
                        return _Search(None, -1, [], state, n_states)
                    stack.append((entry, state, base, window, kinds, must_observe))
                    state, base, window, kinds, must_observe = new, nb, nw, nk, observe
                    done[op] = 1
                    p, q = prv[entry], nxt[entry]
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    r = entry | 1
                    p, q = prv[r], nxt[r]
                    nxt[p] = q
                    if q != -1:
                        prv[q] = p
                    if k < 0:
                        remaining -= 1
                        if remaining == 0:
                            budget.states += n_states
                            return _Search(True, -1, [], state, n_states)
                    entry = nxt[head]
                    ticks += 1
                    if ticks >= _CHECK_EVERY:
                        ticks = 0
                        if deadline is not None and time.monotonic() > deadline:
                            budget.states += n_states
                            budget.exhausted = "time budget exhausted"
                            return _Search(None, -1, [], state, n_states)
                    continue
            entry = nxt[entry]
        else:  # a return whose operation is still open: this path is stuck
            if pos[entry] > best_pos:
                best_pos = pos[entry]
                if record:
                    best_path = [frame[0] >> 1 for frame in stack]
                    best_state = state
            if not stack:
                budget.states += n_states
                return _Search(False, keyed[best_pos][2] >> 1, best_path, best_state, n_states)
            entry, state, base, window, kinds, must_observe = stack.pop()
            op = entry >> 1
            if kind_of[op] < 0:
                remaining += 1
            done[op] = 0
            r = entry | 1
            q = nxt[r]
            nxt[prv[r]] = r
            if q != -1:
                prv[q] = r
            q = nxt[entry]
            nxt[prv[entry]] = entry
            if q != -1:
                prv[q] = entry
            entry = nxt[entry]


def _as_prefix(ops: list[Operation], failed: Operation) -> list[Operation]:
    """The history cut right after `failed` returned: later calls vanish, and what was still open
    then becomes indeterminate (it may or may not have taken effect by then)."""
    cut = failed.ret
    if cut is None:  # the search sticks at a return, and an indeterminate op's is at infinity, after all others
        raise ValueError(f"the history cannot be cut at an operation that never returned: {failed.describe()}")
    out = []
    for op in ops:
        if op.call > cut:
            continue
        if op.ret is not None and op.ret > cut:
            if op.f in ("read", "get"):
                continue  # an open read observed nothing yet
            op = Operation(op.id, op.process, op.f, op.key, op.value, None, op.call, None, op.node,
                           op.call_line, None, op.extra)
        out.append(op)
    return out


def _minimize(
    ops: list[Operation], failed: Operation, model: Model, deadline: float | None, max_states: int
) -> tuple[list[Operation], bool]:
    """Shrink a non-linearizable history, delta-debugging style: try to drop chunks of operations
    (halving the chunk size when nothing goes), each with its model removal closure so no anomaly
    is invented, and keep a drop when the rest is still not linearizable. Ends 1-minimal: no
    single operation (with its closure) can go."""
    current = _as_prefix(ops, failed)

    def still_bad(candidate: list[Operation]) -> bool | None:
        budget = _Budget(deadline, max_states, DEFAULT_MAX_CACHE_BYTES // 8)
        return None if (r := _wgl(renumber(candidate), model, budget, record=False)).ok is None else not r.ok

    conclusive = True  # every check answered within its budget

    chunk = max(1, len(current) // 2)
    while True:
        removed = False
        order = sorted(current, key=lambda o: (not model.is_read_only(o), o.call))
        for start in range(0, len(order), chunk):
            if deadline is not None and time.monotonic() > deadline:
                return current, False
            present = {o.id for o in current}
            drop: dict[int, Operation] = {}
            for op in order[start:start + chunk]:
                if op.id not in present:
                    continue
                closure = model.removal_closure(op, current)
                if closure is not None:
                    drop.update((o.id, o) for o in closure)
            if not drop:
                continue
            candidate = [o for o in current if o.id not in drop]
            if all(o.ret is None for o in candidate):
                continue  # nothing determinate left: trivially linearizable
            bad = still_bad(candidate)
            if bad is None:  # too costly to tell: keeping the chunk is always sound
                conclusive = False
                continue
            if bad:
                current = candidate
                removed = True
        if not removed:
            if chunk == 1:
                return current, conclusive
            chunk = max(1, chunk // 2)


def check_operations(
    ops: list[Operation],
    model: Model,
    *,
    timeout: float | None = None,
    max_states: int = DEFAULT_MAX_STATES,
    max_cache_bytes: int = DEFAULT_MAX_CACHE_BYTES,
    counterexample: bool = True,
    minimize_timeout: float = 5.0,
) -> CheckResult:
    """Is this history linearizable with respect to `model`? Never runs past `timeout` seconds
    (plus up to `minimize_timeout` to shrink a counterexample) or `max_states` memoized states."""
    started = time.monotonic()
    for op in ops:
        why = model.validate(op)
        if why is not None:
            where = f"line {op.call_line}: " if op.call_line is not None else ""
            raise ValueError(where + why)
    deadline = None if timeout is None else started + timeout
    budget = _Budget(deadline, max_states, max_cache_bytes)
    parts = model.partition(ops)
    unknown = False
    for part_key, part_ops in parts:
        numbered = renumber(part_ops)
        result = _wgl(numbered, model, budget, record=counterexample)
        if result.ok is None:
            unknown = True
            break
        if result.ok:
            continue
        cex = None
        if counterexample:
            failed = numbered[result.stuck_at]
            mdeadline = time.monotonic() + minimize_timeout
            witness, minimal = _minimize(numbered, failed, model, mdeadline, MINIMIZE_MAX_STATES)
            cex = Counterexample(
                partition=part_key if len(parts) > 1 or part_key is not None else None,
                failed_op=failed,
                ops=witness,
                minimal=minimal,
                linearized=[numbered[i] for i in result.path],
                state=result.path_state,
                model=model,
            )
        return CheckResult(
            Verdict.NOT_LINEARIZABLE, cex, "", budget.states, time.monotonic() - started, len(parts), len(ops)
        )
    if unknown:
        return CheckResult(
            Verdict.UNKNOWN, None, budget.exhausted, budget.states, time.monotonic() - started, len(parts), len(ops)
        )
    return CheckResult(Verdict.LINEARIZABLE, None, "", budget.states, time.monotonic() - started, len(parts), len(ops))
