"""aws_fixture.py: a small stand-in for three AWS APIs, for the aws spec. It answers like
AWS (the JSON and XML shapes of the API references) and checks every request's SigV4
signature with botocore, an independent signer: the request is rebuilt from the headers the
client says it signed, signed again by botocore with the fixture's secret at the client's
X-Amz-Date, and refused (403, as AWS does) unless the signatures are equal.

  CloudFront      POST /2020-05-31/distribution/ID/invalidation   (XML InvalidationBatch)
                  GET  /2020-05-31/distribution/ID/invalidation/INV
  Secrets Manager POST / X-Amz-Target: secretsmanager.GetSecretValue | PutSecretValue
  ECR             POST / X-Amz-Target: AmazonEC2ContainerRegistry_V20150921.DescribeImages
                                     | ...DescribeImageScanFindings
  GET /__requests  what was received (unsigned; for the spec's assertions)

Usage: /usr/bin/python3 aws_fixture.py ACCESS_KEY SECRET_KEY
Prints "listening PORT" once it accepts connections. Standard library and botocore only.
"""
import base64
import json
import re
import sys
import threading
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

ACCESS_KEY, SECRET_KEY = sys.argv[1], sys.argv[2]
CF_NS = "{http://cloudfront.amazonaws.com/doc/2020-05-31/}"

LOCK = threading.Lock()
RECEIVED = []
SECRETS = {
    "prod/db": {"SecretString": json.dumps({"username": "app", "password": "hunter2-db-pass", "port": 5432})},
    "prod/api-token": {"SecretString": "tok-3f9a8b7c6d5e"},
    "prod/tls-key": {"SecretBinary": base64.b64encode(b"\x00\x01binary-key\xff").decode()},
}
VERSIONS = {"n": 0}
IMAGES = {
    "multiship/api": [
        {"tag": "v2.2.0", "digest": "sha256:" + "a" * 64, "counts": {"CRITICAL": 2, "HIGH": 5, "LOW": 1}},
        {"tag": "v2.1.0", "digest": "sha256:" + "b" * 64, "counts": {}},
        {"tag": "v2.0.0", "digest": "sha256:" + "c" * 64, "counts": None},  # never scanned
        {"tag": "v2.3.0-rc1", "digest": "sha256:" + "d" * 64, "counts": {"MEDIUM": 1}, "pending": 2},
    ],
}
INVALIDATIONS = {}  # id -> {"polls": n, "paths": [...], "distribution": d}
DISTRIBUTIONS = {"E2FIXTURE"}


def verify(handler, body):
    """Returns None when the signature is right, else a reason."""
    auth = handler.headers.get("Authorization", "")
    m = re.match(
        r"AWS4-HMAC-SHA256 Credential=([^/]+)/(\d{8})/([^/]+)/([^/]+)/aws4_request, "
        r"SignedHeaders=([^,]+), Signature=([0-9a-f]{64})$",
        auth,
    )
    if not m:
        return "malformed or missing Authorization header: %r" % auth
    access_key, day, region, service, signed, signature = m.groups()
    if access_key != ACCESS_KEY:
        return "unknown access key " + access_key
    amz_date = handler.headers.get("X-Amz-Date", "")
    if amz_date[:8] != day:
        return "X-Amz-Date %r does not match the credential scope day %s" % (amz_date, day)
    names = signed.split(";")
    if "host" not in names or "x-amz-date" not in names:
        return "host and x-amz-date must be signed (signed: %s)" % signed
    headers = {}
    for name in names:
        values = handler.headers.get_all(name)
        if values is None:
            return "signed header %s was not sent" % name
        headers[name] = ",".join(values)
    request = AWSRequest(
        method=handler.command,
        url="http://%s%s" % (handler.headers["Host"], handler.path),
        headers=headers,
        data=body,
    )
    request.context["timestamp"] = amz_date
    signer = SigV4Auth(Credentials(ACCESS_KEY, SECRET_KEY, headers.get("x-amz-security-token")), service, region)
    canonical = signer.canonical_request(request)
    expected = signer.signature(signer.string_to_sign(request, canonical), request)
    if expected != signature:
        return "signature mismatch; botocore's canonical request:\n" + canonical
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def reply(self, status, body, content_type, extra=None):
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-amzn-RequestId", "req-%d" % len(RECEIVED))
        for k, v in (extra or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def json_error(self, status, kind, message):
        self.reply(status, json.dumps({"__type": kind, "message": message}), "application/x-amz-json-1.1")

    def xml_error(self, status, code, message):
        body = (
            '<?xml version="1.0"?>\n<ErrorResponse xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/">'
            "<Error><Type>Sender</Type><Code>%s</Code><Message>%s</Message></Error>"
            "<RequestId>req-x</RequestId></ErrorResponse>" % (code, message)
        )
        self.reply(status, body, "text/xml")

    def do_GET(self):
        if self.path == "/__requests":
            with LOCK:
                data = json.dumps(RECEIVED)
            return self.reply(200, data, "application/json")
        self.handle_aws(b"")

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        self.handle_aws(self.rfile.read(length))

    def handle_aws(self, body):
        reason = verify(self, body)
        entry = {
            "method": self.command,
            "path": self.path,
            "headers": {k.lower(): v for k, v in self.headers.items()},
            "body": body.decode("utf-8", "replace"),
            "verified": reason is None,
            "reason": reason,
        }
        with LOCK:
            RECEIVED.append(entry)
        target = self.headers.get("X-Amz-Target")
        if reason is not None:
            if target:
                return self.json_error(400, "InvalidSignatureException", "The request signature we calculated "
                                       "does not match the signature you provided. " + reason)
            return self.xml_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not "
                                  "match the signature you provided.")
        if target:
            if self.headers.get("Content-Type") != "application/x-amz-json-1.1":
                return self.json_error(400, "SerializationException", "bad content type")
            return self.json_api(target, json.loads(body or b"{}"))
        return self.cloudfront(body)

    # ---- CloudFront ----

    def cloudfront(self, body):
        m = re.match(r"^/2020-05-31/distribution/([A-Z0-9]+)/invalidation(?:/([A-Z0-9]+))?$", self.path)
        if not m:
            return self.xml_error(404, "NotFound", "no such resource")
        dist, inv = m.groups()
        if dist not in DISTRIBUTIONS:
            return self.xml_error(404, "NoSuchDistribution", "The specified distribution does not exist.")
        if self.command == "POST" and inv is None:
            try:
                root = ET.fromstring(body)
            except ET.ParseError as e:
                return self.xml_error(400, "MalformedXML", str(e))
            if root.tag != CF_NS + "InvalidationBatch":
                return self.xml_error(400, "MalformedInput", "root must be InvalidationBatch, got " + root.tag)
            quantity = root.findtext(CF_NS + "Paths/" + CF_NS + "Quantity")
            paths = [p.text for p in root.findall(CF_NS + "Paths/" + CF_NS + "Items/" + CF_NS + "Path")]
            ref = root.findtext(CF_NS + "CallerReference")
            if not ref or quantity is None or int(quantity) != len(paths) or not paths:
                return self.xml_error(400, "InvalidArgument", "Quantity must match the Paths and "
                                      "CallerReference must be set")
            inv_id = "I%dFIXTURE" % (len(INVALIDATIONS) + 1)
            INVALIDATIONS[inv_id] = {"polls": 0, "paths": paths, "distribution": dist}
            location = "https://cloudfront.amazonaws.com/2020-05-31/distribution/%s/invalidation/%s" % (dist, inv_id)
            return self.reply(201, self.invalidation_xml(inv_id, "InProgress"), "text/xml", {"Location": location})
        if self.command == "GET" and inv is not None:
            state = INVALIDATIONS.get(inv)
            if state is None or state["distribution"] != dist:
                return self.xml_error(404, "NoSuchInvalidation", "The specified invalidation does not exist.")
            state["polls"] += 1
            status = "Completed" if state["polls"] >= 2 else "InProgress"
            return self.reply(200, self.invalidation_xml(inv, status), "text/xml")
        return self.xml_error(405, "MethodNotAllowed", "method not allowed")

    def invalidation_xml(self, inv_id, status):
        state = INVALIDATIONS[inv_id]
        items = "".join("<Path>%s</Path>" % p for p in state["paths"])
        return (
            '<?xml version="1.0"?>\n<Invalidation xmlns="http://cloudfront.amazonaws.com/doc/2020-05-31/">'
            "<Id>%s</Id><Status>%s</Status><CreateTime>2026-11-28T12:00:00Z</CreateTime>"
            "<InvalidationBatch><Paths><Quantity>%d</Quantity><Items>%s</Items></Paths>"
            "<CallerReference>x</CallerReference></InvalidationBatch></Invalidation>"
            % (inv_id, status, len(state["paths"]), items)
        )

    # ---- JSON protocols ----

    def json_api(self, target, req):
        ok = lambda doc: self.reply(200, json.dumps(doc), "application/x-amz-json-1.1")
        if target == "secretsmanager.GetSecretValue":
            s = SECRETS.get(req.get("SecretId"))
            if s is None:
                return self.json_error(400, "ResourceNotFoundException",
                                       "Secrets Manager can't find the specified secret.")
            doc = {"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:%s-AbCdEf" % req["SecretId"],
                   "Name": req["SecretId"], "VersionId": "v-%d" % VERSIONS["n"],
                   "VersionStages": ["AWSCURRENT"], "CreatedDate": 1700000000.0}
            doc.update(s)
            return ok(doc)
        if target == "secretsmanager.PutSecretValue":
            name = req.get("SecretId")
            if name not in SECRETS:
                return self.json_error(400, "ResourceNotFoundException",
                                       "Secrets Manager can't find the specified secret.")
            VERSIONS["n"] += 1
            SECRETS[name] = {"SecretString": req["SecretString"]}
            return ok({"ARN": "arn:aws:secretsmanager:us-east-1:123456789012:secret:%s-AbCdEf" % name,
                       "Name": name, "VersionId": "v-%d" % VERSIONS["n"], "VersionStages": ["AWSCURRENT"]})
        prefix = "AmazonEC2ContainerRegistry_V20150921."
        if target.startswith(prefix):
            repo = IMAGES.get(req.get("repositoryName"))
            if repo is None:
                return self.json_error(400, "RepositoryNotFoundException",
                                       "The repository with name '%s' does not exist in the registry with id "
                                       "'123456789012'" % req.get("repositoryName"))
            op = target[len(prefix):]
            if op == "DescribeImages":
                return self.describe_images(req, repo, ok)
            if op == "DescribeImageScanFindings":
                return self.scan_findings(req, repo, ok)
        return self.json_error(400, "UnknownOperationException", "unknown operation " + target)

    def image_detail(self, repo_name, image):
        d = {"registryId": "123456789012", "repositoryName": repo_name, "imageDigest": image["digest"],
             "imageTags": [image["tag"]], "imageSizeInBytes": 52428800, "imagePushedAt": 1700000000.0,
             "imageManifestMediaType": "application/vnd.docker.distribution.manifest.v2+json"}
        if image["counts"] is not None:
            d["imageScanStatus"] = {"status": "COMPLETE", "description": "The scan was completed successfully."}
            d["imageScanFindingsSummary"] = {"imageScanCompletedAt": 1700000100.0,
                                             "findingSeverityCounts": image["counts"]}
        return d

    def find(self, repo, image_id):
        for image in repo:
            if image_id.get("imageTag") == image["tag"] or image_id.get("imageDigest") == image["digest"]:
                return image
        return None

    def describe_images(self, req, repo, ok):
        name = req["repositoryName"]
        if req.get("imageIds"):
            details = []
            for image_id in req["imageIds"]:
                image = self.find(repo, image_id)
                if image is None:
                    return self.json_error(400, "ImageNotFoundException",
                                           "The image with imageId {imageDigest:'null', imageTag:'%s'} does not "
                                           "exist within the repository with name '%s'"
                                           % (image_id.get("imageTag"), name))
                details.append(self.image_detail(name, image))
            return ok({"imageDetails": details})
        # no ids: two images a page, to exercise nextToken
        start = int(req.get("nextToken") or 0)
        page = repo[start:start + 2]
        doc = {"imageDetails": [self.image_detail(name, i) for i in page]}
        if start + 2 < len(repo):
            doc["nextToken"] = str(start + 2)
        return ok(doc)

    def scan_findings(self, req, repo, ok):
        image = self.find(repo, req.get("imageId") or {})
        if image is None:
            return self.json_error(400, "ImageNotFoundException", "The image does not exist.")
        if image["counts"] is None:
            return self.json_error(400, "ScanNotFoundException",
                                   "Image scan does not exist for the image with '{imageDigest:'%s', imageTag:'%s'}' "
                                   "in the repository with name '%s'" % (image["digest"], image["tag"],
                                                                       req["repositoryName"]))
        doc = {"registryId": "123456789012", "repositoryName": req["repositoryName"],
               "imageId": {"imageDigest": image["digest"], "imageTag": image["tag"]}}
        if image.get("pending", 0) > 0:
            image["pending"] -= 1
            doc["imageScanStatus"] = {"status": "IN_PROGRESS", "description": "The scan is in progress."}
            return ok(doc)
        doc["imageScanStatus"] = {"status": "COMPLETE", "description": "The scan was completed successfully."}
        findings = [{"name": "CVE-2026-%04d" % i, "severity": sev} for i, sev in
                    enumerate(s for s, n in image["counts"].items() for _ in range(n))]
        doc["imageScanFindings"] = {"imageScanCompletedAt": 1700000100.0,
                                    "vulnerabilitySourceUpdatedAt": 1700000000.0,
                                    "findingSeverityCounts": image["counts"],
                                    "findings": findings[: req.get("maxResults", 100)]}
        if len(findings) > req.get("maxResults", 100):
            doc["nextToken"] = "more"
        return ok(doc)


def main():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    print("listening %d" % server.server_address[1], flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
