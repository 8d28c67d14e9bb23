"""What ``STORAGE_URL`` names: parsed here once, for the settings' check and for the backends."""

from __future__ import annotations

from app.storage.interface import validate_key

__all__ = ["parse_s3_url"]


def parse_s3_url(url: str) -> tuple[str, str]:
    """``(bucket, prefix)`` of ``s3://<bucket>[/<prefix>]`` (the prefix without its slashes, maybe "");
    ValueError when it is not one."""
    if not url.startswith("s3://"):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    prefix = prefix.strip("/")
    if not bucket or "?" in url or "#" in url:
        raise ValueError(f"invalid S3 URL {url!r}: use s3://<bucket>[/<prefix>]")
    if prefix:
        validate_key(prefix)  # no '..', no hidden component: the storage's .tmp/ stays apart
    return bucket, prefix
