"""Property tests of the in-memory log against a trivially correct model (a dict index -> term)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kalamdb.raft.log import RaftLog
from kalamdb.raft.types import Entry

ops = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(0, 3), st.integers(1, 4)),  # (term bump, count)
        st.tuples(st.just("overwrite"), st.integers(0, 30), st.integers(1, 4)),  # (back off, count)
        st.tuples(st.just("compact"), st.integers(0, 30), st.just(0)),
        st.tuples(st.just("stable"), st.integers(0, 30), st.just(0)),
    ),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_log_behaves_like_a_dict_model(operations):
    log = RaftLog()
    model: dict[int, int] = {}  # index -> term of every entry still held
    snap = (0, 0)
    durable = 0  # model of what storage has
    for op, a, b in operations:
        last = log.last_index
        if op == "append":
            term = log.last_term + a
            for i in range(last + 1, last + 1 + b):
                log.append(Entry(term, i))
                model[i] = term
        elif op == "overwrite":
            first = max(snap[0] + 1, last + 1 - a)
            term = log.last_term + 1  # a new leader's entries have a higher term
            log.truncate_and_append([Entry(term, i) for i in range(first, first + b)])
            for i in list(model):
                if i >= first:
                    del model[i]
            for i in range(first, first + b):
                model[i] = term
            durable = min(durable, first - 1)
        elif op == "compact":
            idx = min(a, last)
            if idx > snap[0]:
                t = log.term(idx)
                log.compact(idx, t)
                snap = (idx, t)
                for i in list(model):
                    if i <= idx:
                        del model[i]
                durable = max(durable, idx)
        else:  # storage reports a write of everything unstable
            un = log.unstable()
            if un:
                log.stable_to(un[-1].index, un[-1].term)
                durable = un[-1].index
        # invariants
        assert log.snap_index == snap[0]
        assert log.last_index == (max(model) if model else snap[0])
        assert log.term(snap[0]) == snap[1]
        for i, t in model.items():
            assert log.term(i) == t
        assert log.term(log.last_index + 1) is None
        if snap[0] > 0:
            assert log.term(snap[0] - 1) is None
        assert [e.index for e in log.entries] == sorted(model)
        assert log.unstable_from == durable + 1  # exactly the entries storage lacks are unstable


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(0, 3), min_size=1, max_size=30), st.integers(0, 40), st.integers(0, 12))
def test_find_conflict_by_term_returns_largest_index_with_term_at_most(bumps, index, term):
    log = RaftLog()
    t = 1
    for i, bump in enumerate(bumps, start=1):
        t += bump
        log.append(Entry(t, i))
    got = log.find_conflict_by_term(index, term)
    assert got <= min(index, log.last_index)
    assert (log.term(got) or 0) <= term
    for j in range(got + 1, min(index, log.last_index) + 1):
        assert log.term(j) > term  # nothing larger qualifies


def test_up_to_date_compares_term_first_then_length():
    log = RaftLog()
    for i, t in enumerate([1, 1, 2], start=1):
        log.append(Entry(t, i))
    assert log.is_up_to_date(3, 2)
    assert log.is_up_to_date(1, 3)  # higher last term wins even if shorter
    assert not log.is_up_to_date(10, 1)  # longer but older term loses
    assert not log.is_up_to_date(2, 2)


def test_find_conflict_reports_first_new_or_divergent_entry():
    log = RaftLog()
    for i in range(1, 6):
        log.append(Entry(1, i))
    assert log.find_conflict([Entry(1, 3), Entry(1, 4)]) == 0
    assert log.find_conflict([Entry(1, 5), Entry(1, 6)]) == 6
    assert log.find_conflict([Entry(1, 3), Entry(2, 4)]) == 4


def test_slice_limited_respects_bytes_but_sends_at_least_one():
    log = RaftLog()
    for i in range(1, 11):
        log.append(Entry(1, i, data=b"x" * 100))
    assert len(log.slice_limited(1, 100, 1)) == 1
    assert len(log.slice_limited(1, 100, 400)) == 3
    assert len(log.slice_limited(1, 4, 1 << 20)) == 4
