"""Sagas: orchestrated runs of steps with compensations.

Who owns what, from the user's API down to the SQL:

- ``definition``: ``@saga.step``, ``@step.compensation``, ``ctx`` (plain data, no ORM);
  ``registry``: ``define`` and the definitions known to this process.
- ``machine``: the pure state machine (what to do after an outcome); imports neither
  Django's ORM nor Celery.
- ``engine``: starts runs and executes one step (claim, run, record);
  ``transitions``: the record of an outcome and the moves it decides;
  ``attempts``: an attempt's outcome, its history line, its timeout and retries;
  ``continuation``: local steps (the next step run in the same task);
  ``dispatch``: step messages sent after commit, by task name.
- ``recovery`` and ``sweeper``: expired leases, deadlines and lost messages.
- ``store`` (the run's locks and writes), ``leases`` (what the locked rows say of
  an attempt: lease held, claimable, due soon, stalled), ``creation`` (a new run in one statement),
  ``scans`` (queries across runs), ``rows`` (plain SQL for the hot path).
- ``graph``: the Mermaid drawing of a definition and a run.
"""
