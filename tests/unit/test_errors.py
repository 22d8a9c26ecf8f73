from kalamdb.errors import KalamError


def test_status_follows_the_api_code():
    assert KalamError("PERMISSION_DENIED", "no").status == 403
    assert KalamError("LEADER_NOT_AVAILABLE", "no").status == 503
    assert KalamError("INVALID_SQL", "bad").status == 400


def test_round_trip_through_a_dict_keeps_code_and_message():
    err = KalamError("SQL_EXECUTION_ERROR", "Primary key violation", details="x")
    again = KalamError.from_dict(err.to_dict())
    assert (again.code, again.message, again.details, again.status) == (
        "SQL_EXECUTION_ERROR", "Primary key violation", "x", 400)
