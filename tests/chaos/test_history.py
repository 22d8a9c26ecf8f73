"""Pairing events into operations: what counts as happened, not happened, and maybe happened."""

from __future__ import annotations

import io

import orjson
import pytest

from kalamdb.chaos.history import Event, HistoryError, HistoryRecorder, pair_events
from kalamdb.chaos.parsers import detect_format, load_history, parse_edn, parse_events, parse_jepsen


def test_ok_pairs_call_and_return_in_history_order(reg):
    ops = reg("""
        0 :invoke :write 1
        1 :invoke :read nil
        0 :ok :write 1
        1 :ok :read 1
    """)
    assert [(o.f, o.value, o.output, o.call, o.ret) for o in ops] == [
        ("write", 1, 1, 0, 2),
        ("read", None, 1, 1, 3),
    ]


def test_fail_drops_the_operation_and_info_leaves_it_open(reg):
    ops = reg("""
        0 :invoke :cas [1 2]
        0 :fail :cas [1 2]
        1 :invoke :write 3
        1 :info :write :timed-out
        2 :invoke :write 4
    """)
    assert [(o.f, o.value, o.ret) for o in ops] == [("write", 3, None), ("write", 4, None)]
    assert all(o.indeterminate for o in ops)


def test_failed_or_timed_out_reads_are_dropped(reg):
    ops = reg("""
        0 :invoke :read nil
        0 :fail :read :timed-out
        1 :invoke :read nil
        1 :info :read :timed-out
        2 :invoke :read nil
    """)
    assert ops == []


def test_invoke_while_pending_makes_the_earlier_call_indeterminate():
    events = [Event("invoke", 0, "write", value=1), Event("invoke", 0, "write", value=2), Event("ok", 0, "write")]
    ops = pair_events(events)
    assert [(o.value, o.ret) for o in ops] == [(1, None), (2, 2)]


def test_return_without_invoke_names_the_line():
    with pytest.raises(HistoryError, match=r"h\.jsonl:7: ok for process 3 without a pending invoke"):
        pair_events([Event("ok", 3, "read", value=1, line=7)], source="h.jsonl")


def test_return_for_another_function_is_an_error():
    with pytest.raises(HistoryError, match="answers an invoke of :write"):
        pair_events([Event("invoke", 0, "write", value=1, line=1), Event("ok", 0, "read", value=1, line=2)])


def test_events_with_times_are_ordered_by_time_not_file_order():
    events = [
        Event("ok", 0, "write", value=1, time=30),
        Event("invoke", 1, "read", time=40),
        Event("invoke", 0, "write", value=1, time=10),
        Event("ok", 1, "read", value=1, time=50),
    ]
    ops = pair_events(events)
    assert [(o.f, o.call, o.ret) for o in ops] == [("write", 0, 1), ("read", 2, 3)]


def test_recorder_writes_jsonl_that_reads_back_to_the_same_operations(tmp_path):
    buf = io.StringIO()
    rec = HistoryRecorder(buf)
    rec.invoke(0, "write", "k", 5, node="n1")
    rec.invoke(1, "read", "k", node="n2")
    rec.ok(0, "write", "k", 5, node="n1")
    rec.ok(1, "read", "k", 5, node="n2")
    rec.invoke(2, "cas", "k", [5, 6], node="n3")
    rec.info(2, "cas", "k", [5, 6], node="n3")
    path = tmp_path / "history.jsonl"
    path.write_text(buf.getvalue())
    lines = [orjson.loads(x) for x in buf.getvalue().splitlines()]
    assert lines[0]["type"] == "invoke" and lines[0]["node"] == "n1" and isinstance(lines[0]["time"], int)
    from_file = load_history(path)
    live = rec.operations()
    assert [(o.f, o.key, o.value, o.output, o.node, o.ret is None) for o in from_file] == [
        (o.f, o.key, o.value, o.output, o.node, o.ret is None) for o in live
    ] == [("write", "k", 5, 5, "n1", False), ("read", "k", None, 5, "n2", False),
          ("cas", "k", [5, 6], None, "n3", True)]


def test_jepsen_parser_reads_values_and_skips_nemesis():
    events = parse_jepsen(
        "INFO  jepsen.util - 3\t:invoke\t:cas\t[3 0]\n"
        "INFO  jepsen.util - :nemesis\t:info\t:start\tnil\n"
        "INFO  jepsen.util - 3\t:ok\t:cas\t[3 0]\n"
        "INFO  jepsen.util - 4   :invoke :read   nil\n"
    )
    assert [(e.process, e.type, e.f, e.value, e.line) for e in events] == [
        (3, "invoke", "cas", [3, 0], 1), (3, "ok", "cas", [3, 0], 3), (4, "invoke", "read", None, 4)
    ]


def test_edn_parser_reads_keys_strings_and_nil():
    events = parse_edn('{:process 7, :type :ok, :f :get, :key "a b", :value "x \\"q\\" y"}\n'
                       '{:process 1, :type :invoke, :f :get, :key "k", :value nil}')
    assert (events[0].process, events[0].type, events[0].f, events[0].key, events[0].value) == (
        7, "ok", "get", "a b", 'x "q" y')
    assert events[1].value is None


@pytest.mark.parametrize(
    ("text", "fmt", "message"),
    [
        ("INFO  jepsen.util - 1\t:invoke\t:read\tnil\ngarbage\n", "jepsen", r"f\.log:2: not a Jepsen history line"),
        ("INFO  jepsen.util - 1\t:invoke\t:write\t[1\n", "jepsen", r"f\.log:1: cannot read value"),
        ('{:process 1, :type :invoke}\n', "edn", r"f\.log:1: missing :f"),
        ('{:process 1 :type}\n', "edn", r"f\.log:1: map needs key/value pairs"),
        ('{"type": "invoke", "process": 1, "f": "read"}\n{not json\n', "jsonl", r"f\.log:2: invalid JSON"),
        ('{"type": "begin", "process": 1, "f": "read"}\n', "jsonl", r"f\.log:1: type must be one of"),
        ('{"type": "ok", "process": 1, "f": "read", "time": "soon"}\n', "jsonl", r"f\.log:1: time must be"),
        ("hello\n", "auto", r"f\.log:1: cannot tell the history format"),
    ],
)
def test_parse_errors_name_file_and_line(text, fmt, message):
    with pytest.raises(HistoryError, match=message):
        parse_events(text, fmt, "f.log")


def test_format_detection():
    assert detect_format("\n{:process 1}") == "edn"
    assert detect_format('{"type": "ok"}') == "jsonl"
    assert detect_format("INFO  jepsen.util - 1\t:invoke\t:read\tnil") == "jepsen"
