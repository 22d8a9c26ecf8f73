"""The transactional checker's parts: the EDN reader, reading and pairing txn histories, the
cycle search against brute force, no false alarms on simulated strictly serializable databases,
detection of the simulated bugs, and `kalamdb check --model list-append|rw-register`."""

from __future__ import annotations

import gzip
import itertools
import random
import re
import time

import orjson
import pytest
from click.testing import CliRunner

from kalamdb.chaos.check_cli import check_command
from kalamdb.chaos.elle import check_txns, edn
from kalamdb.chaos.elle.consistency import classify
from kalamdb.chaos.elle.graph import DATA as DATA_RELS
from kalamdb.chaos.elle.graph import RW, WR, WW, DepGraph, strongly_connected_components
from kalamdb.chaos.elle.history import pair_txn_events, parse_txn_history
from kalamdb.chaos.elle.search import SPECS, find_cycle, simple_cycles
from kalamdb.chaos.elle.synth import simulate
from kalamdb.chaos.history import HistoryError
from kalamdb.testing.seeds import default_seed, replay_hint

SEED = default_seed()


def setup_module() -> None:
    print(f"seed {SEED} ({replay_hint(SEED)})")


# ------------------------------------------------------------------------------ EDN
def test_edn_reader_reads_jepsen_forms():
    text = """; a comment
    {:type :ok, :f :txn, :value [[:append 1 2] [:r 2 [1 2]] [:r 3 nil]], :process 0, :index 7,
     :time 12, :error "a \\"quoted\\" string", :set #{1 2}, :l (1 2), :x -3, :y 1.5, :n 12N, #_ :gone :z true}
    #jepsen.history.Op{:type :invoke, :process :nemesis}
    """
    forms = [f for f, _ in edn.read_all(text)]
    assert len(forms) == 2
    m = forms[0]
    assert m["type"] == "ok" and isinstance(m["type"], edn.Keyword) and repr(m["type"]) == ":ok"
    assert m["value"] == [["append", 1, 2], ["r", 2, [1, 2]], ["r", 3, None]]
    assert m["error"] == 'a "quoted" string' and m["set"] == {1, 2} and m["l"] == [1, 2]
    assert (m["x"], m["y"], m["n"], m["z"]) == (-3, 1.5, 12, True) and "gone" not in m
    assert forms[1]["process"] == "nemesis"


@pytest.mark.parametrize(("text", "message"), [
    ("{:a 1", "never closed"), ("{:a 1]", "closed by"), ("{:a}", "odd number"), ("[1 2}", "closed by")])
def test_edn_errors_name_the_line(text, message):
    with pytest.raises(edn.EdnError, match=message):
        list(edn.read_all("\n" + text))


# ------------------------------------------------------------------------------ histories
def test_jsonl_and_edn_histories_pair_the_same():
    jsonl = "\n".join(orjson.dumps(e).decode() for e in [
        {"type": "invoke", "process": 0, "f": "txn", "value": [["append", 1, 2], ["r", 1, None]]},
        {"type": "invoke", "process": 1, "f": "read", "key": 3},
        {"type": "invoke", "process": 2, "f": "txn", "value": [["append", 5, 1]]},
        {"type": "fail", "process": 2, "f": "txn", "value": [["append", 5, 1]]},
        {"type": "ok", "process": 0, "f": "txn", "value": [["append", 1, 2], ["r", 1, [2]]]},
    ])
    txns, skipped = parse_txn_history(jsonl, source="h.jsonl")
    assert skipped == 1
    assert [(t.type, t.value) for t in txns] == [("ok", [("append", 1, 2), ("r", 1, (2,))]),
                                                 ("fail", [("append", 5, 1)])]
    assert txns[0].call == 0 and txns[0].ret == 4  # positions in the whole history
    edn_text = """[{:index 0 :type :invoke, :f :txn, :value [[:append 1 2] [:r 1 nil]], :process 0}
                   {:index 1 :type :ok, :f :txn, :value [[:append 1 2] [:r 1 [2]]], :process 0}]"""
    etxns, _ = parse_txn_history(edn_text)
    assert [(t.type, t.value, t.label) for t in etxns] == [("ok", [("append", 1, 2), ("r", 1, (2,))], 1)]


@pytest.mark.parametrize(("text", "message"), [
    ('{"type":"ok","process":0,"f":"txn","value":[]}', "without a pending invoke"),
    ('{"type":"invoke","process":0,"f":"txn","value":[["incr",1,1]]}', "unknown micro-operation 'incr'"),
    ('{"type":"invoke","process":0,"f":"txn","value":[["r",1]]}', "a micro-operation is [f key value]"),
    (('{"type":"invoke","process":0,"f":"txn","value":[["append",1,1]]}\n'
     '{"type":"ok","process":0,"f":"txn","value":[["append",1,2]]}'), "differ from the invoke"),
    ("{:type :ok :process 0 :value [[:r 1 [1]]]}\n{:type", "never closed"),
])
def test_bad_txn_histories_name_the_line(text, message):
    with pytest.raises(HistoryError, match=re.escape(message)) as info:
        parse_txn_history(text, source="h")
    assert str(info.value).startswith("h:")


# ------------------------------------------------------------------------------ search vs brute force
def _brute_force_classes(graph: DepGraph) -> set[str]:
    """Classes of every simple cycle of a tiny graph, each edge taking each relation it carries."""
    n = graph.n
    out = set()
    for size in range(2, n + 1):
        for perm in itertools.permutations(range(n), size):
            if perm[0] != min(perm):
                continue
            pairs = list(zip(perm, perm[1:] + perm[:1], strict=True))
            masks = [graph.rel(a, b) for a, b in pairs]
            if not all(masks):
                continue
            options = [[name for bit, name in ((WW, "ww"), (WR, "wr"), (RW, "rw")) if m & bit] for m in masks]
            for rels in itertools.product(*options):
                out.add(classify(list(rels)))
    return out


def test_cycle_search_finds_every_class_brute_force_finds():
    rng = random.Random(SEED)
    for _ in range(300):
        n = rng.randint(2, 5)
        g = DepGraph(n)
        for a in range(n):
            for b in range(n):
                if a != b and rng.random() < 0.45:
                    for rel in rng.choice(((WW,), (WR,), (RW,), (WW, RW), (WR, RW))):
                        g.link(a, b, rel)
        expected = _brute_force_classes(g)
        found = set()
        for scc in strongly_connected_components(g, DATA_RELS):
            for name in ("G0", "G1c", "G-single", "G-nonadjacent", "G2-item"):
                c = find_cycle(g, scc, SPECS[name], time.monotonic() + 5)
                if c is not None:
                    assert c.type in expected, (c, expected)
                    assert len({a for a, _, _ in c.steps}) == len(c.steps)  # simple
                    for a, b, rel in c.steps:
                        assert g.rel(a, b) & {"ww": WW, "wr": WR, "rw": RW}[rel]
                    found.add(name)
        # whenever brute force sees a class, the search finds a cycle at least that severe
        for name in ("G0", "G1c", "G-single"):
            if name in expected:
                assert name in found, (name, expected, found, g.out)


def test_simple_cycles_split_a_walk():
    walk = [(0, 1, "ww"), (1, 2, "wr"), (2, 1, "rw"), (1, 0, "ww")]
    assert sorted(map(len, simple_cycles(walk))) == [2, 2]


# ------------------------------------------------------------------------------ simulated databases
@pytest.mark.parametrize("model", ["list-append", "rw-register"])
def test_no_false_alarm_on_a_strictly_serializable_database(model):
    for i in range(8):
        events = simulate(random.Random(f"{SEED}:{i}"), 600, model=model, processes=6)
        txns, _ = pair_txn_events(events)
        r = check_txns(txns, model=model)
        assert r.verdict == "VALID", f"seed {SEED}:{i}: {r.format(limit=1)}"


@pytest.mark.parametrize("model", ["list-append", "rw-register"])
@pytest.mark.parametrize("bug", ["stale-reads", "split-writes"])
def test_simulated_bugs_are_caught(model, bug):
    for i in range(5):
        events = simulate(random.Random(f"{SEED}:{i}"), 400, model=model, processes=6, bug=bug)
        txns, _ = pair_txn_events(events)
        r = check_txns(txns, model=model)
        assert r.verdict == "INVALID", f"seed {SEED}:{i}"
        assert any(c.startswith("G") for c in r.forbidden), r.summary()


@pytest.mark.parametrize("model", ["list-append", "rw-register"])
def test_ten_thousand_txns_in_seconds(model):
    events = simulate(random.Random(SEED), 10_000, model=model, processes=10)
    txns, _ = pair_txn_events(events)
    started = time.process_time()
    r = check_txns(txns, model=model)
    assert r.verdict == "VALID", r.summary()
    assert time.process_time() - started < 10, r.summary()
    bad = simulate(random.Random(SEED), 10_000, model=model, processes=10, bug="split-writes")
    started = time.process_time()
    r = check_txns(pair_txn_events(bad)[0], model=model)
    assert r.verdict == "INVALID" and time.process_time() - started < 10, r.summary()


# ------------------------------------------------------------------------------ kalamdb check
def _write(tmp_path, events, name="history.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(orjson.dumps(e.to_json()).decode() for e in events) + "\n")
    return path


def test_check_cli_on_txn_histories(tmp_path):
    good = _write(tmp_path, simulate(random.Random(SEED), 300), "good.jsonl")
    r = CliRunner().invoke(check_command, [str(good)])
    assert r.exit_code == 0 and "VALID" in r.output and "[model list-append, strict-serializable]" in r.output
    bad = _write(tmp_path, simulate(random.Random(SEED), 300, bug="split-writes"), "bad.jsonl")
    r = CliRunner().invoke(check_command, ["--model", "list-append", str(bad)])
    assert r.exit_code == 1 and r.output.split(": ")[1] == "INVALID" and "a contradiction!" in r.output
    reg = _write(tmp_path, simulate(random.Random(SEED), 300, model="rw-register", bug="stale-reads"), "reg.jsonl")
    r = CliRunner().invoke(check_command, [str(reg)])
    assert r.exit_code == 1 and "[model rw-register" in r.output
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(gzip.compress(bad.read_bytes()))
    assert CliRunner().invoke(check_command, [str(gz)]).exit_code == 1
    r = CliRunner().invoke(check_command, ["--timeout", "0.000001", "--consistency", "snapshot-isolation", str(bad)])
    assert r.exit_code in (1, 3)


def test_check_cli_unknown_and_usage_errors(tmp_path):
    dup = tmp_path / "dup.edn"
    dup.write_text("{:type :ok, :process 0, :value [[:append 1 1]]}\n{:type :ok, :process 1, :value [[:append 1 1]]}\n")
    r = CliRunner().invoke(check_command, ["--model", "list-append", str(dup)])
    assert r.exit_code == 3 and "UNKNOWN" in r.output and "more than once" in r.output
    bad = tmp_path / "bad.edn"
    bad.write_text("{:type :invoke, :process 0, :value [[:append 1 1]]}\n{:type :ok, :process 0, :value [[:append 1 1]\n")
    r = CliRunner().invoke(check_command, ["--model", "list-append", str(bad)])
    assert r.exit_code == 2 and f"{bad}:2" in r.output
    r = CliRunner().invoke(check_command, ["--model", "rw-register", "--assume", "magic", str(dup)])
    assert r.exit_code == 2 and "unknown assumption 'magic'" in r.output
