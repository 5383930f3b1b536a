"""Ledger states. Celery's PENDING means both "waiting" and "unknown"; the ledger never says PENDING."""
QUEUED = "QUEUED"  # published: the broker holds it (task-sent event)
STARTED = "STARTED"
PROGRESS = "PROGRESS"
RETRY = "RETRY"  # failed an attempt, republished for a later one
SUCCESS = "SUCCESS"
FAILURE = "FAILURE"
CANCELLED = "CANCELLED"  # stopped on an operator's request (queued: never ran; running: stopped)
TIMED_OUT = "TIMED_OUT"  # soft or hard time limit
REVOKED = "REVOKED"  # revoked outside the control plane (expired, Flower, celery control revoke)
LOST = "LOST"  # neither the broker nor any worker holds it any more (see apps/control/sweeper.py)

ALL = (QUEUED, STARTED, PROGRESS, RETRY, SUCCESS, FAILURE, CANCELLED, TIMED_OUT, REVOKED, LOST)
CHOICES = [(state, state.replace("_", " ").lower()) for state in ALL]
ACTIVE = frozenset({QUEUED, STARTED, PROGRESS, RETRY})
TERMINAL = frozenset(ALL) - ACTIVE
RUNNING = frozenset({STARTED, PROGRESS})
