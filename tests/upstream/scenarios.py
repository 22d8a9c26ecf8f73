"""Every replayed scenario, in a stable order (upstream's testserver, misc, then smoke tests)."""

from scenarios_misc import SCENARIOS as MISC
from scenarios_smoke import SCENARIOS as SMOKE
from scenarios_testserver import SCENARIOS as TESTSERVER

ALL_SCENARIOS = [*TESTSERVER, *MISC, *SMOKE]
