"""Errors the trainer reports to people, each with the process exit code the operator understands.

Exit codes: 2 invalid job, 3 model or data not found or unusable, 4 storage access denied, 5 a NaN or inf
update, 1 other errors.
"""

from __future__ import annotations


class UnlearningError(Exception):
    """Base class: a problem with a message meant for the person who submitted the job."""

    exit_code = 1
    reason = "TrainerError"


class SpecError(UnlearningError):
    """The job spec is invalid; the message names the field and the fix."""

    exit_code = 2
    reason = "InvalidSpec"


class DataError(UnlearningError):
    """The model or the data cannot be found, read or used with each other."""

    exit_code = 3
    reason = "DataError"


class AccessDeniedError(UnlearningError):
    """The storage refused the credentials."""

    exit_code = 4
    reason = "S3AccessDenied"


class NonFiniteError(UnlearningError):
    """A gradient update became NaN or inf. Deterministic: a retry from the same checkpoint would repeat it."""

    exit_code = 5
    reason = "NonFinite"
