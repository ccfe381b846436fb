"""botocore_sign.py: signs requests with botocore, the independent SigV4 signer the aws spec
compares tug's signatures against. Reads a JSON list of cases on stdin, prints a JSON list
of results. Standard library and python3-botocore only; run with /usr/bin/python3.

A case: { method, url, headers, body, params (list of [name, value]), service, region,
time ("20130524T000000Z"), access_key, secret_key, token, presign (seconds) }
A result: { authorization, signature, url, canonical_request, string_to_sign }
"""
import datetime
import json
import sys

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials


class FixedClock:
    """Stands in for the datetime module inside botocore.auth, so the signing time is fixed."""

    def __init__(self, when):
        fixed = when

        class _DateTime(datetime.datetime):
            @classmethod
            def utcnow(cls):
                return fixed

            @classmethod
            def now(cls, tz=None):
                return fixed if tz is None else fixed.replace(tzinfo=tz)

        self.datetime = _DateTime
        self.timezone = datetime.timezone
        self.timedelta = datetime.timedelta


def sign(case):
    when = datetime.datetime.strptime(case["time"], "%Y%m%dT%H%M%SZ")
    botocore.auth.datetime = FixedClock(when)
    creds = Credentials(case["access_key"], case["secret_key"], case.get("token"))
    service, region = case["service"], case["region"]
    s3 = service == "s3"
    if case.get("presign"):
        cls = botocore.auth.S3SigV4QueryAuth if s3 else botocore.auth.SigV4QueryAuth
        signer = cls(creds, service, region, expires=case["presign"])
    else:
        cls = botocore.auth.S3SigV4Auth if s3 else botocore.auth.SigV4Auth
        signer = cls(creds, service, region)
    body = case.get("body")
    request = AWSRequest(
        method=case["method"],
        url=case["url"],
        headers=case.get("headers") or {},
        data=body.encode("utf-8") if body is not None else None,
        params=[tuple(p) for p in case.get("params") or []] or None,
    )
    # what add_auth would compute, kept for the spec's failure messages
    request.context["timestamp"] = case["time"]
    signer.add_auth(request)
    result = {"url": request.url, "authorization": request.headers.get("Authorization")}
    auth = result["authorization"]
    if auth:
        result["signature"] = auth.rsplit("Signature=", 1)[1]
    else:
        result["signature"] = request.url.rsplit("X-Amz-Signature=", 1)[1]
    result["headers"] = {k: v for k, v in request.headers.items()}
    return result


def main():
    cases = json.load(sys.stdin)
    json.dump([sign(c) for c in cases], sys.stdout)


if __name__ == "__main__":
    main()
