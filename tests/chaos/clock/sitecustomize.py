"""A wall clock off by ``CHAOS_CLOCK_SKEW`` seconds, for one worker pool of a chaos run.

Python imports ``sitecustomize`` at start-up from the first ``sys.path`` entry that has
one; the harness puts this directory first on ``PYTHONPATH`` of the pool it skews
(``probe_faults.skewed_env``), so this runs before Celery, kombu or Django is imported
and everything they read from the wall clock is shifted: ``time.time``/``time_ns``
(kombu's timer, logging) and ``datetime.now``/``utcnow``/``today``,
``date.today`` (Celery's ETAs, Django's ``timezone.now``). The monotonic clock is left
alone, as NTP leaves it.

Why not libfaketime (Debian's ``libfaketime``, via ``LD_PRELOAD``): with Python 3.11
here it either fails every ``time.sleep`` with ``EINVAL`` (with the monotonic clock
left alone: its ``clock_nanosleep`` wrapper) or, faking the monotonic clock too,
stretches every timed lock or event wait by the offset (``pthread_cond_timedwait``
gets a faked absolute deadline), which hangs Celery.

``datetime.datetime`` is replaced by a subclass whose constructors build plain
``datetime`` objects and that passes ``isinstance`` for them, as freezegun does, so
values read from PostgreSQL still are datetimes to Django.
"""

import datetime as _datetime
import os
import time as _time

SKEW = float(os.environ.get("CHAOS_CLOCK_SKEW") or 0.0)

if SKEW:
    _real_time, _real_time_ns = _time.time, _time.time_ns
    _real_datetime, _real_date = _datetime.datetime, _datetime.date
    _offset = _datetime.timedelta(seconds=SKEW)

    def _skewed_time() -> float:
        return _real_time() + SKEW

    def _skewed_time_ns() -> int:
        return _real_time_ns() + int(SKEW * 1e9)

    class _DatetimeType(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, _real_datetime)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, _real_datetime)

    class _SkewedDatetime(_real_datetime, metaclass=_DatetimeType):
        def __new__(cls, *args, **kwargs):
            return _real_datetime(*args, **kwargs)

        @classmethod
        def now(cls, tz=None):
            return _real_datetime.now(tz) + _offset

        @classmethod
        def utcnow(cls):
            return _real_datetime.now(_datetime.UTC).replace(tzinfo=None) + _offset

        @classmethod
        def today(cls):
            return cls.now()

    class _DateType(type):
        def __instancecheck__(cls, obj):
            return isinstance(obj, _real_date)

        def __subclasscheck__(cls, sub):
            return issubclass(sub, _real_date)

    class _SkewedDate(_real_date, metaclass=_DateType):
        def __new__(cls, *args, **kwargs):
            return _real_date(*args, **kwargs)

        @classmethod
        def today(cls):
            return (_real_datetime.now() + _offset).date()

    _time.time, _time.time_ns = _skewed_time, _skewed_time_ns
    _datetime.datetime, _datetime.date = _SkewedDatetime, _SkewedDate
