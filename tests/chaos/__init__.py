"""The chaos suite: the real topology on loopback, faults injected under load, invariants
checked after heal and drain (issue 7). ``run.py`` is the harness; ``test_chaos.py`` the
short tier; ``make chaos`` the long one."""
