"""The test engine itself: a one-node Swift answering the S3 API the way boto3 users expect."""

from __future__ import annotations

import hashlib
import os

from tests.swift_engine import SwiftEngine


def test_put_get_range_list(swift: SwiftEngine, bucket: str) -> None:
    s3 = swift.client()
    s3.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello swift")
    assert s3.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello swift"
    part = s3.get_object(Bucket=bucket, Key="a/b.txt", Range="bytes=6-10")
    assert part["Body"].read() == b"swift"
    assert part["ContentRange"] == "bytes 6-10/11"
    assert [o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="a/")["Contents"]] == ["a/b.txt"]


def test_multipart(swift: SwiftEngine, bucket: str) -> None:
    s3 = swift.client()
    parts = [os.urandom(5 * 1024 * 1024), os.urandom(1234)]
    upload = s3.create_multipart_upload(Bucket=bucket, Key="big")["UploadId"]
    done = []
    for n, data in enumerate(parts, 1):
        etag = s3.upload_part(Bucket=bucket, Key="big", UploadId=upload, PartNumber=n, Body=data)["ETag"]
        assert etag.strip('"') == hashlib.md5(data).hexdigest()
        done.append({"PartNumber": n, "ETag": etag})
    assert [u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])] == [upload]
    s3.complete_multipart_upload(Bucket=bucket, Key="big", UploadId=upload, MultipartUpload={"Parts": done})
    body = s3.get_object(Bucket=bucket, Key="big")["Body"].read()
    assert body == b"".join(parts)
    composite = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-2"
    assert s3.head_object(Bucket=bucket, Key="big")["ETag"].strip('"') == composite
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads")


def test_wrong_secret_is_refused(swift: SwiftEngine, bucket: str) -> None:
    import botocore.exceptions
    import pytest

    with pytest.raises(botocore.exceptions.ClientError) as err:
        swift.client(secret_key="wrong").put_object(Bucket=bucket, Key="x", Body=b"x")
    assert err.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
