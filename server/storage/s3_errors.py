"""boto3/botocore exceptions -> the server's error tree.

Transient trouble (no connection, timeouts, throttling, 5xx) is UNAVAILABLE;
a missing bucket or refused credentials is FAILED_PRECONDITION; a missing
key is NOT_FOUND. Messages name the bucket and the S3 error code, never the
credentials (S3's own messages can quote the access key id, so they are not
passed on).
"""

from __future__ import annotations

from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    IncompleteReadError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import (
    ConnectionError as BotoConnectionError,
)

from server.errors import FailedPrecondition, Internal, NotFound, ServingError, Unavailable

DENIED = frozenset(
    {
        "AccessDenied",
        "AllAccessDisabled",
        "AccountProblem",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "Forbidden",
        "403",
    }
)
TRANSIENT = frozenset(
    {
        "InternalError",
        "RequestTimeout",
        "ServiceUnavailable",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "RequestLimitExceeded",
        "TooManyRequests",
        "500",
        "502",
        "503",
        "504",
    }
)
MISSING_KEY = frozenset({"NoSuchKey", "NotFound", "404"})


def storage_error(exc: BaseException, bucket: str, action: str, key: str = "") -> ServingError:
    """The ServingError to raise for a failed S3 call `action` (e.g. "uploading a part")."""
    where = f"bucket '{bucket}'"
    if isinstance(exc, ServingError):
        return exc
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return FailedPrecondition(
            f"object storage: no usable AWS credentials for {where} "
            "(set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, a profile or a role)"
        )
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if code == "NoSuchBucket":
            return FailedPrecondition(f"object storage: {where} does not exist")
        if code in DENIED or status == 403:
            return FailedPrecondition(
                f"object storage: access to {where} denied ({code or status}) while {action}; "
                "check the credentials and the bucket policy"
            )
        if code in MISSING_KEY or status == 404:
            return NotFound(f"object '{key}' not found in {where}")
        if code in TRANSIENT or status >= 500 or status == 429:
            return Unavailable(f"object storage: {where} unavailable ({code or status}) while {action}; retry later")
        return FailedPrecondition(f"object storage: {where} refused {action} ({code or status})")
    if isinstance(exc, (BotoConnectionError, HTTPClientError, IncompleteReadError)):  # refused, reset, timeouts
        return Unavailable(f"object storage: cannot reach {where} ({type(exc).__name__}) while {action}; retry later")
    if isinstance(exc, BotoCoreError):
        return Internal(f"object storage: {action} in {where} failed ({type(exc).__name__})")
    return Internal(f"object storage: {action} in {where} failed")
