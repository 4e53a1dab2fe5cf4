"""The S3 client of the tier: boto3, called from worker threads.

Why boto3 in threads and not aiobotocore: aiobotocore pins an exact botocore
release and its own aiohttp range, which would tie the daemon's aiohttp to
another project's release cycle; boto3's low-level client is thread-safe, its
calls are plain blocking I/O that belongs in a thread anyway (parts are read,
hashed and sent there, off the event loop), and it is the client the bench's
yardstick uses.  Concurrency is bounded by the outbox (``tier_concurrency``
workers), and the connection pool is sized to match.

Bandwidth: one token bucket (``tier_bandwidth`` bytes/s) shared by all
uploads; a part or small object waits for its bytes' worth of tokens before
it is sent, so the average rate stays under the limit (bursts of one part).
"""

from __future__ import annotations

import base64
import hashlib
import threading
import time
from dataclasses import dataclass
from typing import Any, BinaryIO

from storaged.tier.settings import TierSettings


class TierError(Exception):
    """The engine refused or failed a request; ``code`` is its error code (``AccessDenied``…)."""

    def __init__(self, message: str, code: str = "", status: int = 0) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class Throttle:
    """A token bucket shared by threads: ``take(n)`` blocks until n bytes may be sent."""

    def __init__(self, rate: int) -> None:
        self.rate = rate
        self._lock = threading.Lock()
        self._tokens = float(rate)
        self._stamp = time.monotonic()

    def take(self, n: int) -> None:
        if self.rate <= 0 or n <= 0:
            return
        with self._lock:
            now = time.monotonic()
            self._tokens = min(float(self.rate), self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= n
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


@dataclass
class RemoteObject:
    key: str
    size: int
    etag: str
    sha256: str | None
    box: str | None


def md5_etag(data: bytes) -> tuple[str, str]:
    """(hex md5, base64 md5 for Content-MD5)."""
    digest = hashlib.md5(data, usedforsecurity=False).digest()
    return digest.hex(), base64.b64encode(digest).decode()


def multipart_etag(part_md5s: list[str]) -> str:
    """The ETag S3 engines give a completed multipart upload: md5 of the parts' md5s, dash, count."""
    joined = b"".join(bytes.fromhex(m) for m in part_md5s)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(part_md5s)}"


class S3:
    def __init__(self, settings: TierSettings) -> None:
        import boto3
        from botocore.config import Config as BotoConfig

        self.settings = settings
        self.bucket = settings.bucket
        self.throttle = Throttle(settings.bandwidth)
        self._client = boto3.session.Session().client(
            "s3",
            endpoint_url=settings.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key,
            aws_secret_access_key=settings.secret_key,
            verify=settings.verify_tls,
            config=BotoConfig(
                s3={"addressing_style": "path"} if settings.endpoint else {},
                # The outbox retries with its own backoff; botocore's retries would hide an outage.
                retries={"max_attempts": 1, "mode": "standard"},
                connect_timeout=10,
                read_timeout=60,
                max_pool_connections=max(10, settings.concurrency * 2),
                # Content-MD5 is sent on every put; the newer CRC headers are not understood by every
                # S3-compatible engine.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
            ),
        )

    # -- errors ----------------------------------------------------------------
    @staticmethod
    def _error(exc: Exception, what: str) -> TierError:
        from botocore.exceptions import BotoCoreError, ClientError

        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            code = err.get("Code", "") or str(status)
            return TierError(f"{what}: {code} {err.get('Message', '')}".strip(), code, status)
        if isinstance(exc, BotoCoreError):
            return TierError(f"{what}: {exc}", type(exc).__name__)
        return TierError(f"{what}: {type(exc).__name__}: {exc}", type(exc).__name__)

    def _call(self, what: str, fn, **kwargs) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except (ClientError, BotoCoreError, OSError) as exc:
            raise self._error(exc, what) from exc

    # -- calls (blocking: run in a thread) -----------------------------------------
    def head(self, key: str) -> RemoteObject | None:
        try:
            r = self._call(f"HEAD {key}", self._client.head_object, Key=key)
        except TierError as exc:
            if exc.status == 404 or exc.code in ("404", "NoSuchKey", "NotFound"):
                return None
            raise
        meta = r.get("Metadata", {})
        return RemoteObject(key, r["ContentLength"], r.get("ETag", "").strip('"'), meta.get("sha256"),
                            meta.get("box"))

    def put(self, key: str, data: bytes, metadata: dict[str, str], content_type: str = "") -> str:
        _md5_hex, md5_b64 = md5_etag(data)
        self.throttle.take(len(data))
        extra = {"ContentType": content_type} if content_type else {}
        r = self._call(f"PUT {key}", self._client.put_object, Key=key, Body=data, ContentMD5=md5_b64,
                       Metadata=metadata, **extra)
        return r.get("ETag", "").strip('"')

    def create_multipart(self, key: str, metadata: dict[str, str], content_type: str = "") -> str:
        extra = {"ContentType": content_type} if content_type else {}
        r = self._call(f"CreateMultipartUpload {key}", self._client.create_multipart_upload, Key=key,
                       Metadata=metadata, **extra)
        return r["UploadId"]

    def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> tuple[str, str]:
        """Send one part; answer (its md5 hex, the engine's ETag)."""
        md5_hex, md5_b64 = md5_etag(data)
        self.throttle.take(len(data))
        r = self._call(f"UploadPart {key} #{number}", self._client.upload_part, Key=key, UploadId=upload_id,
                       PartNumber=number, Body=data, ContentMD5=md5_b64)
        return md5_hex, r.get("ETag", "").strip('"')

    def list_parts(self, key: str, upload_id: str) -> dict[int, str] | None:
        """Parts the engine holds for an upload ({number: etag}); None when the upload is gone."""
        parts: dict[int, str] = {}
        marker = 0
        while True:
            try:
                r = self._call(f"ListParts {key}", self._client.list_parts, Key=key, UploadId=upload_id,
                               PartNumberMarker=marker)
            except TierError as exc:
                if exc.code == "NoSuchUpload" or exc.status == 404:
                    return None
                raise
            for p in r.get("Parts", []):
                parts[p["PartNumber"]] = p["ETag"].strip('"')
            if not r.get("IsTruncated"):
                return parts
            marker = r.get("NextPartNumberMarker", 0)

    def complete_multipart(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        r = self._call(f"CompleteMultipartUpload {key}", self._client.complete_multipart_upload, Key=key,
                       UploadId=upload_id,
                       MultipartUpload={"Parts": [{"PartNumber": n, "ETag": f'"{e}"'} for n, e in parts]})
        return r.get("ETag", "").strip('"')

    def abort_multipart(self, key: str, upload_id: str) -> None:
        try:
            self._call(f"AbortMultipartUpload {key}", self._client.abort_multipart_upload, Key=key,
                       UploadId=upload_id)
        except TierError as exc:
            if exc.code != "NoSuchUpload" and exc.status != 404:
                raise

    def uploads_of(self, key: str) -> list[tuple[str, float]]:
        """Unfinished multipart uploads of exactly ``key``: (upload id, initiated unix time)."""
        r = self._call(f"ListMultipartUploads {key}", self._client.list_multipart_uploads, Prefix=key)
        return [(u["UploadId"], u["Initiated"].timestamp()) for u in r.get("Uploads", []) if u["Key"] == key]

    def get(self, key: str, range_header: str | None = None) -> tuple[dict[str, Any], Any]:
        """(response headers, streaming body) of a GET, with an optional ``Range`` header."""
        extra = {"Range": range_header} if range_header else {}
        r = self._call(f"GET {key}", self._client.get_object, Key=key, **extra)
        return r, r["Body"]

    def download(self, key: str, out: BinaryIO, chunk: int = 1 << 20) -> None:
        _meta, body = self.get(key)
        try:
            while data := body.read(chunk):
                out.write(data)
        except OSError as exc:
            raise self._error(exc, f"GET {key}") from exc
        finally:
            body.close()

    def get_bytes(self, key: str) -> bytes:
        _meta, body = self.get(key)
        try:
            return body.read()
        finally:
            body.close()

    def list_keys(self, prefix: str):
        """Yield (key, size) under ``prefix``."""
        token = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            r = self._call(f"LIST {prefix}", self._client.list_objects_v2, Prefix=prefix, **extra)
            for o in r.get("Contents", []):
                yield o["Key"], o["Size"]
            if not r.get("IsTruncated"):
                return
            token = r.get("NextContinuationToken")

    def presign(self, key: str, expires: int = 3600, **params: str) -> str:
        return self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": key,
                                                                         **params}, ExpiresIn=expires)

    def check_bucket(self) -> None:
        self._call("HEAD bucket", self._client.head_bucket)
