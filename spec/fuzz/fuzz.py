#!/usr/bin/env python3
"""fuzz.py: a mutation fuzzer for tug's parsers (make fuzz; a short run is spec/fuzz_spec.lua).

    spec/fuzz/fuzz.py [--tug PATH] [--time SECONDS] [--seed N] [TARGET...]

Targets: yaml, json, environment, kubeconfig, playbook (run in a tug process by
spec/fuzz/target.lua, one framed input at a time over a pipe) and http (mutated requests sent
over loopback to an http.server that target.lua serves). Each target starts from its seed
corpus, spec/fuzz/corpus/TARGET/, and mutates it: bit flips, byte and block insertions,
deletions and copies, tokens from a per-target dictionary, splices of two seeds.

--time is the whole run, shared evenly by the targets. An input is a failure when the tug
process dies (a crash, a sanitizer report, an abort), when it does not answer within
--hang seconds, or when target.lua reports a broken invariant ("bug ..."). Every failure is
saved to spec/fuzz/out/TARGET-N.bin (or --out) with the process's stderr beside it, and the
run exits 1. One line per target says how many inputs were tried and, for all but http,
how long the slowest took (--slowest PREFIX keeps it in PREFIX.TARGET).

Why a mutation loop rather than libFuzzer: four of the six parsers are Lua over C bindings
(environment files, kubeconfig, playbook files, and the yaml/json bindings' conversions),
and the HTTP parser sits behind the event loop, so each libFuzzer harness would have to
embed the whole runtime; driving the real binary covers the bindings, the Lua loaders and
the round trips the same way the CLI does, under the same ASan + UBSan build as `make
sanitize`, with no other compiler. What it gives up is coverage feedback: the mutations are
blind, so the seeds and dictionaries carry the structure.
"""
import argparse
import glob
import os
import random
import select
import shutil
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# Failures saved per target; past that they are only counted (one bug tends to repeat).
MAX_SAVED = 20
TARGETS = ["yaml", "json", "environment", "kubeconfig", "playbook", "http"]

DICTIONARY = {
    "yaml": [b"&a ", b"*a", b"<<: ", b"<<: [*a, *a]", b"!!int ", b"!!float ", b"!!str ", b"!!null ",
             b"!!bool ", b"!!merge ", b"---\n", b"...\n", b"? ", b": ", b"- ", b"[", b"]", b"{", b"}",
             b"|\n", b">-\n", b"'", b'"', b"\\u0000", b"\\x00", b"\t", b"#", b"%YAML 1.2\n",
             b"%TAG ! tag:x,1:\n", b"0x", b"0o", b".inf", b"-.inf", b".nan", b"1e999", b"~", b"null",
             b"9223372036854775808", b"-9223372036854775809", b"\xef\xbb\xbf", b"\xff", b"\xed\xa0\x80"],
    "json": [b"\\u0000", b"\\ud800", b"\\udc00", b"\\ud83d\\ude00", b'"', b"\\", b"[", b"]", b"{", b"}",
             b":", b",", b"1e999", b"-0", b"0.0e-0", b"9223372036854775807", b"9223372036854775808",
             b"-9223372036854775808", b"1.7976931348623157e308", b"5e-324", b"null", b"true", b"false",
             b"\x00", b"\xff", b"\xc0\xaf", b"\xef\xbb\xbf", b"[" * 64, b"]" * 64],
    "environment": [b"${env:HOME}", b"${env:NO_SUCH_VAR:-x}", b"${secret:env:HOME}", b"${secret:aws:x}",
                    b"${", b"}", b"protected: ", b"lock: ", b"kubernetes", b"file", b"&a ", b"*a", b"<<: *a",
                    b"true", b"null", b"[", b"{", b"name: "],
    "kubeconfig": [b"current-context: ", b"contexts:\n- name: a\n  context: {cluster: a, user: a}\n",
                   b"clusters:\n- name: a\n  cluster: {server: https://127.0.0.1:1}\n",
                   b"users:\n- name: a\n  user: {token: t}\n", b"exec:", b"command: ", b"apiVersion: ",
                   b"client.authentication.k8s.io/v1", b"interactiveMode: Never", b"certificate-authority-data: ",
                   b"client-key-data: ", b"insecure-skip-tls-verify: true", b"proxy-url: ", b"tokenFile: ",
                   b"as: ", b"as-groups: [a]", b"namespace: ", b"auth-provider: ", b"null", b"==", b"&a ", b"*a"],
    "playbook": [b"step ", b"playbook ", b"{", b"}", b"run = function(ctx) end", b"undo = function() end",
                 b"timeout = ", b'"5m"', b"retries = ", b"params = { x = { type = ", b'"enum"', b'"duration"',
                 b"required = true", b"default = ", b"values = {", b"pattern = ", b"when = ", b"tags = {",
                 b"steps = {", b"return ", b"nil", b"--[[", b"]]", b"[==[", b"\\u{7FFFFFFF}", b"0x7fffffffffffffff",
                 b"goto ", b"::l::", b"local ", b"<close>", b"<const>"],
    "http": [b"\r\n", b"\r\n\r\n", b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"0\r\n\r\n",
             b"ffffffffffffffff\r\n", b"Connection: keep-alive\r\n", b"Connection: close\r\n",
             b"Expect: 100-continue\r\n", b"Upgrade: websocket\r\n", b"Host: x\r\n", b"GET ", b"POST ",
             b"HTTP/1.1", b"HTTP/1.0", b"HTTP/9.9", b"?a=%zz&b=%00", b"%", b"#", b" ", b":", b"\x00", b"\xff",
             b"18446744073709551616", b"-1", b"\t", b"\n"],
}


# The project's own files are seeds too, beside spec/fuzz/corpus/TARGET/.
PROJECT_SEEDS = {
    "yaml": ["environments/*.yaml"],
    "environment": ["environments/*.yaml"],
    "playbook": ["playbooks/*.lua", "playbooks/runbooks/*.lua"],
}


def load_corpus(target):
    folder = os.path.join(HERE, "corpus", target)
    paths = [os.path.join(folder, name) for name in sorted(os.listdir(folder))]
    for pattern in PROJECT_SEEDS.get(target, []):
        paths += sorted(glob.glob(os.path.join(HERE, "..", "..", pattern)))
    seeds = []
    for path in paths:
        with open(path, "rb") as f:
            seeds.append(f.read())
    if not seeds:
        sys.exit("fuzz.py: no seeds in " + folder)
    return seeds


def mutate(rng, seeds, words):
    data = bytearray(rng.choice(seeds))
    for _ in range(rng.randint(1, 8)):
        op = rng.randrange(9)
        at = rng.randint(0, len(data))
        if op == 0 and data:
            i = rng.randrange(len(data))
            data[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif op == 2 and data:
            del data[at:at + rng.randint(1, 16)]
        elif op == 3 and data:
            i = rng.randrange(len(data))
            data[at:at] = data[i:i + rng.randint(1, 32)]
        elif op in (4, 5):
            data[at:at] = rng.choice(words)
        elif op == 6 and data:
            i = rng.randrange(len(data))
            data[i:i + 1] = rng.choice(words)
        elif op == 7:
            other = rng.choice(seeds)
            j = rng.randint(0, len(other))
            data = data[:at] + other[j:]
        elif op == 8 and data:
            i = rng.randrange(len(data))
            data[i] = rng.choice(b"\x00\xff\x7f\x80 \n\r\t\"'\\[]{}:,-#&*!|>%")
    return bytes(data[:65536])


class Failures:
    def __init__(self, out):
        self.out = out
        self.count = 0
        self.per_target = {}

    def save(self, target, data, why, stderr=b""):
        os.makedirs(self.out, exist_ok=True)
        self.count += 1
        self.per_target[target] = self.per_target.get(target, 0) + 1
        if self.per_target[target] > MAX_SAVED:
            if self.per_target[target] == MAX_SAVED + 1:
                print("FAIL %s: more than %d failures; counting the rest without saving them" % (target, MAX_SAVED))
            return
        base = os.path.join(self.out, "%s-%d" % (target, self.count))
        with open(base + ".bin", "wb") as f:
            f.write(data)
        with open(base + ".txt", "wb") as f:
            f.write(why.encode() + b"\n" + stderr)
        print("FAIL %s: %s (input saved to %s.bin)" % (target, why, base), flush=True)
        if stderr:
            sys.stdout.write(stderr.decode(errors="replace")[-4000:] + "\n")


def start(tug, args, tmp):
    env = dict(os.environ, TUG_FUZZ_TMP=tmp)
    # A fuzzed playbook may ask for a huge string: Lua must see a failed allocation (an
    # error it reports), not ASan abort on it; a leak check (make sanitize) stays on if set.
    asan = env.get("ASAN_OPTIONS", "detect_leaks=0")
    env["ASAN_OPTIONS"] = asan + ":allocator_may_return_null=1"
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    err = tempfile.TemporaryFile(dir=tmp)
    proc = subprocess.Popen([tug, "lua", os.path.join(HERE, "target.lua")] + args, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=err, env=env)
    return proc, err


def stderr_of(err):
    err.seek(0)
    return err.read()


def stop(proc):
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def fuzz_loader(target, tug, seconds, rng, hang, failures, tmp):
    """The five targets that run in target.lua's loop. Returns the number of inputs tried."""
    seeds, words = load_corpus(target), DICTIONARY[target]
    proc, err = start(tug, [target], tmp)
    tried, deadline = 0, time.monotonic() + seconds
    queue = list(seeds)  # every seed once as it is, then mutations
    slowest = (0.0, b"")
    while time.monotonic() < deadline:
        data = queue.pop() if queue else mutate(rng, seeds, words)
        tried += 1
        sent = time.monotonic()
        try:
            proc.stdin.write(b"%08x" % len(data) + data)
            proc.stdin.flush()
        except BrokenPipeError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], hang)
        line = proc.stdout.readline() if ready else None
        if not line:
            why = "no answer within %gs (a hang)" % hang if not ready else "the tug process died (exit %s)" % proc.wait()
            stop(proc)
            failures.save(target, data, why, stderr_of(err))
            proc, err = start(tug, [target], tmp)
            continue
        took = time.monotonic() - sent
        if took > slowest[0]:
            slowest = (took, data)
        line = line.decode(errors="replace").rstrip("\n")
        if line.startswith("bug "):
            failures.save(target, data, line)
    try:
        proc.stdin.close()
        code = proc.wait(timeout=hang)
    except (BrokenPipeError, subprocess.TimeoutExpired):
        stop(proc)
        code = "killed: it did not end within %gs of its input's end" % hang
    if code != 0:
        failures.save(target, b"", "the tug process exited %s at the end" % code, stderr_of(err))
    return tried, slowest


def http_exchange(port, data, hang):
    """Sends data on a new connection and reads until the server closes or goes quiet."""
    with socket.create_connection(("127.0.0.1", port), timeout=hang) as s:
        try:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
        except OSError:
            return  # the server may close first on a bad request: that is an answer
        s.settimeout(3)
        try:
            while s.recv(65536):
                pass
        except socket.timeout:
            pass  # an incomplete request waits for the idle timeout; the next probe checks life
        except OSError:
            pass


def http_alive(port, hang):
    probe = b"GET /alive HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=hang) as s:
            s.sendall(probe)
            reply = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                reply += chunk
        return reply.startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def start_http(tug, tmp, hang):
    proc, err = start(tug, ["http"], tmp)
    ready, _, _ = select.select([proc.stdout], [], [], 30)
    line = proc.stdout.readline().decode() if ready else ""
    if not line.startswith("listening "):
        stop(proc)
        sys.exit("fuzz.py: the http target did not start: " + stderr_of(err).decode(errors="replace"))
    return proc, err, int(line.split()[1])


def fuzz_http(tug, seconds, rng, hang, failures, tmp):
    seeds, words = load_corpus("http"), DICTIONARY["http"]
    proc, err, port = start_http(tug, tmp, hang)
    tried, deadline = 0, time.monotonic() + seconds
    queue = list(seeds)
    recent = []  # inputs since the last probe: one of them is the culprit if the server died
    while time.monotonic() < deadline:
        data = queue.pop() if queue else mutate(rng, seeds, words)
        tried += 1
        recent.append(data)
        try:
            http_exchange(port, data, hang)
        except OSError:
            pass
        if proc.poll() is not None or len(recent) >= 16:
            if proc.poll() is not None or not http_alive(port, hang):
                why = "the server died (exit %s)" % proc.poll() if proc.poll() is not None else "the server stopped answering"
                stop(proc)
                failures.save("http", b"".join(b"%08x" % len(r) + r for r in recent),
                              why + "; the file holds the last %d requests, each framed by 8 hex digits of length" % len(recent),
                              stderr_of(err))
                proc, err, port = start_http(tug, tmp, hang)
            recent = []
    stop(proc)
    return tried, None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("targets", nargs="*", default=TARGETS, metavar="TARGET")
    parser.add_argument("--tug", default=os.path.join(HERE, "..", "..", "tug"))
    parser.add_argument("--time", type=float, default=60, help="seconds for the whole run")
    parser.add_argument("--hang", type=float, default=10, help="seconds an input may take")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=os.path.join(HERE, "out"))
    parser.add_argument("--slowest", metavar="PREFIX", help="write each target's slowest input to PREFIX.TARGET")
    args = parser.parse_args()
    for t in args.targets:
        if t not in TARGETS:
            sys.exit("fuzz.py: unknown target '%s' (targets: %s)" % (t, ", ".join(TARGETS)))
    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    failures = Failures(args.out)
    tmp = tempfile.mkdtemp(prefix="tug-fuzz-")
    os.makedirs(os.path.join(tmp, "environments"))
    os.makedirs(os.path.join(tmp, "playbooks"))
    print("fuzz.py: %s, %gs, seed %d" % (os.path.abspath(args.tug), args.time, seed), flush=True)
    try:
        share = args.time / len(args.targets)
        for t in args.targets:
            before = failures.count
            started = time.monotonic()
            if t == "http":
                tried, slowest = fuzz_http(args.tug, share, rng, args.hang, failures, tmp)
            else:
                tried, slowest = fuzz_loader(t, args.tug, share, rng, args.hang, failures, tmp)
            line = "%-11s %9d inputs in %5.1fs, %d failures" % (t, tried, time.monotonic() - started,
                                                               failures.count - before)
            if slowest:
                line += ", slowest input %.2fs" % slowest[0]
                if args.slowest:
                    with open("%s.%s" % (args.slowest, t), "wb") as f:
                        f.write(slowest[1])
            print(line, flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if failures.count:
        print("fuzz.py: %d failures, saved in %s" % (failures.count, args.out))
        sys.exit(1)


if __name__ == "__main__":
    main()
