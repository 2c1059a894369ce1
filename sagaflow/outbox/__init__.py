"""The transactional outbox: events written with the change they announce, relayed
to the broker, and applied at most once by each consumer.

- ``publish``: ``sagaflow.publish``, which records an event in the caller's transaction;
- ``store``: the queries on ``OutboxEvent`` (insert, the relay's claim, requeue,
  backlog, retention), except
- ``failures``: counting a failed publish (one retry time per key, and its locks);
- ``relay``: moves committed events to the broker, batch by batch;
- ``publishers``: where a batch goes (the ``Publisher`` protocol, Celery by default);
- ``consumers``: ``@sagaflow.consumer`` handlers and their delivery;
- ``inbox``: every query on ``InboxMessage``, what each consumer did with each event.
"""
