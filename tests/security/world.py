"""What the adversarial suite protects: alice's secrets, and the oracle that spots them."""

SECRET = "SECRET-of-alice"
ALICE_ROWS = 7  # distinctive counts: a leaked COUNT(*) shows up as 6, 7 or 8; bob's own is 1


def leaked(value) -> bool:
    text = repr(value)
    return SECRET in text or "$argon2" in text
