"""The transactional outbox: events written with the change they announce, relayed
to the broker, and applied at most once by each consumer.

- ``publish``: ``sagaflow.publish``, which records an event in the caller's transaction;
- ``store``: every query on ``OutboxEvent`` (insert, the relay's claim, failures, requeue,
  backlog, retention);
- ``relay``: moves committed events to the broker, batch by batch;
- ``consumers``: ``@sagaflow.consumer`` handlers and their delivery;
- ``inbox``: every query on ``InboxMessage``, what each consumer did with each event.
"""
