"""A model-based test of the saga engine: random definitions, random interleavings of
step outcomes, crashes, deliveries, sweeps, deadlines, operators and deploys, with the
invariants of the design checked after every rule (see ``machine.py``)."""
