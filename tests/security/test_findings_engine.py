"""Engine-level findings of the adversarial review (issue 11, "Low"), each as a test that failed
before its fix: hostile input gets a clear 4xx error, never a 500 or a silent wrong value."""

from __future__ import annotations

import pytest

from kalamdb.errors import KalamError


@pytest.fixture
def t(node):
    node.sql("CREATE NAMESPACE ns")
    node.sql("CREATE USER TABLE ns.t (id BIGINT PRIMARY KEY, v TEXT)")
    node.sql("INSERT INTO ns.t (id, v) VALUES (1, 'a')")
    return node


def test_negating_text_is_a_clear_error_not_a_500_or_a_zero(t):
    err = t.error("INSERT INTO ns.t (id) VALUES (-'a')")
    assert err.status == 400 and "negate" in err.message
    assert t.rows("SELECT id FROM ns.t") == [["1"]]


@pytest.mark.parametrize("sql", ["SELECT * FROM (ns.t)", "SELECT * FROM (SELECT * FROM ns.t)",
                                 "SELECT * FROM ((ns.t))"])
def test_parenthesised_sources_show_the_same_columns(t, sql):
    plain = t.sql("SELECT * FROM ns.t")[0]
    got = t.sql(sql)[0]
    assert got["schema"] == plain["schema"] and got["rows"] == plain["rows"]


def test_an_out_of_range_bigint_names_the_value_and_the_column(t):
    err = t.error("INSERT INTO ns.t (id, v) VALUES (1099511627776000000000, 'x')")
    assert err.status == 400
    assert "1099511627776000000000" in err.message and "'id'" in err.message and "BigInt" in err.message


def test_a_non_admin_password_change_of_another_user_is_refused_before_hashing(t):
    t.sql("CREATE USER alice WITH PASSWORD 'alice-password' ROLE user")
    t.sql("CREATE USER bob WITH PASSWORD 'bob-password1' ROLE user")
    bob = t.login("bob", "bob-password1")
    with pytest.raises(KalamError) as info:
        t.db.prepare("ALTER USER alice SET PASSWORD 'owned-by-bob'", None, None, bob)  # no command is made
    assert info.value.code == "PERMISSION_DENIED"


def test_a_dba_level_shared_table_is_for_dba_and_system_only(t):
    t.sql("CREATE SHARED TABLE ns.ops (id BIGINT PRIMARY KEY, v TEXT) WITH (ACCESS_LEVEL='DBA')")
    t.sql("INSERT INTO ns.ops (id, v) VALUES (1, 'runbook')")
    t.sql("CREATE USER svc WITH PASSWORD 'svc-password1' ROLE service")
    t.sql("CREATE USER ops WITH PASSWORD 'ops-password1' ROLE dba")
    svc, ops = t.login("svc", "svc-password1"), t.login("ops", "ops-password1")
    assert t.error("SELECT * FROM ns.ops", who=svc).code == "PERMISSION_DENIED"
    assert t.rows("SELECT v FROM ns.ops", who=ops) == [["runbook"]]
    t.sql("ALTER TABLE ns.ops SET ACCESS LEVEL public")
    assert t.rows("SELECT v FROM ns.ops", who=svc) == [["runbook"]]
