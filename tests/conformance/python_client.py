"""Conformance of Ferry with the official RocketMQ 5 Python client.

Starts `ferry serve` itself (fresh data directory, free loopback ports), then
exercises the client end to end: producer sends (tags, keys, properties, a
1 MiB body), SimpleConsumer receive/ack, tag filters, redelivery after the
invisible duration with rising attempts, ChangeInvisibleDuration, a
PushConsumer, and a kill -9 + restart of the broker in the middle with
nothing acknowledged lost and nothing acked delivered again.

Usage: python python_client.py path/to/ferry
Exits non-zero on the first failed check.
"""

import hashlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

from rocketmq import (ClientConfiguration, ConsumeResult, Credentials,
                      FilterExpression, Message, MessageListener, Producer,
                      PushConsumer, SimpleConsumer)

logging.getLogger().setLevel(logging.WARNING)
for name in ("rocketmq", "rocketmq-python-client"):
    logging.getLogger(name).setLevel(logging.ERROR)

FERRY = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/ferry")
RUN = f"{os.getpid()}"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    def __init__(self, extra_args=()):
        self.extra_args = list(extra_args)
        self.dir = tempfile.mkdtemp(prefix="ferry-conformance-")
        self.grpc = free_port()
        self.http = free_port()
        self.proc = None
        self.log = open(os.path.join(self.dir, "broker.log"), "ab")

    def start(self):
        self.proc = subprocess.Popen(
            [FERRY, "serve", "--data-dir", os.path.join(self.dir, "data"),
             "--grpc-listen", f"127.0.0.1:{self.grpc}",
             "--http-listen", f"127.0.0.1:{self.http}"] + self.extra_args,
            stdout=self.log, stderr=self.log)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.http}/readyz", timeout=1).read()
                return
            except Exception:
                if self.proc.poll() is not None:
                    raise SystemExit(f"broker exited with {self.proc.returncode}; see {self.dir}/broker.log")
                time.sleep(0.05)
        raise SystemExit("broker did not become ready in 30 s")

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                raise SystemExit("broker did not stop on SIGTERM within 20 s")
            if self.proc.returncode != 0:
                raise SystemExit(f"broker exited with {self.proc.returncode} on SIGTERM")

    def get_json(self, path):
        import json
        return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5).read())

    def metrics(self):
        return urllib.request.urlopen(f"http://127.0.0.1:{self.http}/metrics", timeout=5).read().decode()


CHECKS = []


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        raise SystemExit(1)
    CHECKS.append(what)
    print(f"ok   {what}", flush=True)


def config(broker):
    return ClientConfiguration(f"127.0.0.1:{broker.grpc}", Credentials(), request_timeout=10)


def message(topic, body, tag=None, keys=(), props=None):
    m = Message()
    m.topic = topic
    m.body = body
    if tag:
        m.tag = tag
    for k in keys:
        m.keys = k  # the client's setter adds one key per assignment
    for k, v in (props or {}).items():
        m.add_property(k, v)
    return m


def drain(consumer, want, invisible=10, ack=True, rounds=40):
    """Receives until `want` messages were seen or `rounds` polls came back empty."""
    got = []
    empty = 0
    while len(got) < want and empty < rounds:
        batch = consumer.receive(32, invisible)
        if not batch:
            empty += 1
            continue
        for m in batch:
            got.append(m)
            if ack:
                consumer.ack(m)
    return got


def simple_consumer(broker, group, topic, expr="*", await_duration=2):
    c = SimpleConsumer(config(broker), group, {topic: FilterExpression(expr)}, await_duration=await_duration)
    c.startup()
    return c


def wait_for(cond, timeout):
    """Polls `cond` every 0.1 s for up to `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def run_suite(broker, checks):
    """Starts `broker`, runs `checks(closers)`, then shuts down every client
    the checks put in `closers` and the broker, whatever happened; reports
    the number of checks and removes the data directory on success."""
    broker.start()
    closers = []
    try:
        checks(closers)
    finally:
        for c in closers:
            try:
                c.shutdown()
            except Exception:
                pass
        broker.stop()
    print(f"\nall {len(CHECKS)} checks passed")
    shutil.rmtree(broker.dir, ignore_errors=True)


def main():
    broker = Broker()

    def checks(closers):
        producer = Producer(config(broker), (f"t-main-{RUN}",))
        producer.startup()
        closers.append(producer)
        run_checks(broker, producer)

    run_suite(broker, checks)


def run_checks(broker, producer):
    topic = f"t-main-{RUN}"
    # --- producer: many messages, tags, keys, properties, a 1 MiB body ---
    sent = {}
    tags = ["a", "b", "c"]
    for i in range(150):
        body = f"message {i}".encode() * 10
        m = message(topic, body, tag=tags[i % 3], keys=(f"key-{i}", f"order-{i % 7}"), props={"n": str(i), "kind": "test"})
        receipt = producer.send(m)
        sent[receipt.message_id] = (body, tags[i % 3], i)
    big = os.urandom(1 << 20)
    receipt = producer.send(message(topic, big, tag="big", keys=("big",)))
    sent[receipt.message_id] = (big, "big", -1)
    check(len(sent) == 151, "producer sent 151 messages, each answered with a message id")

    # --- simple consumer: receive and ack everything, contents intact ---
    c = simple_consumer(broker, f"g-all-{RUN}", topic)
    got = drain(c, len(sent))
    ids = [m.message_id for m in got]
    check(sorted(ids) == sorted(sent), "SimpleConsumer received every sent message exactly once")
    ok = True
    for m in got:
        body, tag, i = sent[m.message_id]
        if m.body != body or m.tag != tag or m.corrupted:
            ok = False
        if i >= 0 and (m.properties.get("n") != str(i) or m.properties.get("kind") != "test"
                       or sorted(m.keys) != sorted([f"key-{i}", f"order-{i % 7}"])):
            ok = False
        if m.delivery_attempt != 1:
            ok = False
    check(ok, "bodies, tags, keys, properties and attempt=1 intact on delivery")
    bigs = [m for m in got if m.tag == "big"]
    check(len(bigs) == 1 and hashlib.md5(bigs[0].body).digest() == hashlib.md5(big).digest(),
          "1 MiB body delivered intact (MD5 digest accepted by the client)")
    check(drain(c, 1, rounds=1) == [], "nothing is delivered again after ack")
    c.shutdown()

    # --- tag filter ---
    c = simple_consumer(broker, f"g-filter-{RUN}", topic, "a||b")
    got = drain(c, 100)
    check(len(got) == 100 and all(m.tag in ("a", "b") for m in got), "tag filter a||b delivers only tags a and b (100 of 151)")
    c.shutdown()

    # --- redelivery after the invisible duration, attempts rising ---
    t2 = f"t-redeliver-{RUN}"
    p2 = Producer(config(broker), (t2,))
    p2.startup()
    mid = p2.send(message(t2, b"redeliver me", tag="r")).message_id
    c = simple_consumer(broker, f"g-redeliver-{RUN}", t2)
    first = drain(c, 1, invisible=2, ack=False)
    check(len(first) == 1 and first[0].message_id == mid and first[0].delivery_attempt == 1, "first delivery has attempt 1")
    t0 = time.time()
    second = drain(c, 1, invisible=2, ack=False)
    waited = time.time() - t0
    check(len(second) == 1 and second[0].message_id == mid and second[0].delivery_attempt == 2,
          "un-acked message redelivered with attempt 2")
    check(waited >= 1.5, f"redelivery waited for the invisible duration ({waited:.1f}s >= 2s)")
    try:
        c.ack(first[0])
        stale_ack_refused = False
    except Exception:
        stale_ack_refused = True
    check(stale_ack_refused, "ack with the receipt handle of an earlier delivery is refused")
    third = drain(c, 1, invisible=2, ack=False)
    check(len(third) == 1 and third[0].delivery_attempt == 3, "third delivery has attempt 3")
    c.ack(third[0])
    check(drain(c, 1, rounds=2) == [], "acked after redelivery: not delivered again")

    # --- ChangeInvisibleDuration: new handle, old one dead ---
    mid = p2.send(message(t2, b"change my invisibility")).message_id
    m = drain(c, 1, invisible=60, ack=False)[0]
    old_handle = m.receipt_handle
    c.change_invisible_duration(m, 1)
    check(m.receipt_handle != old_handle, "ChangeInvisibleDuration returns a new receipt handle")
    again = drain(c, 1, invisible=60, ack=False)
    check(len(again) == 1 and again[0].message_id == mid and again[0].delivery_attempt == 2,
          "message visible again after the changed (shorter) duration, attempt 2")
    c.ack(again[0])
    c.shutdown()
    p2.shutdown()

    # --- push consumer consumes everything ---
    t3 = f"t-push-{RUN}"
    p3 = Producer(config(broker), (t3,))
    p3.startup()
    want = set()
    for i in range(200):
        want.add(p3.send(message(t3, f"push {i}".encode(), tag="p")).message_id)
    seen = set()
    lock = threading.Lock()
    done = threading.Event()

    class Listener(MessageListener):
        def consume(self, msg):
            with lock:
                seen.add(msg.message_id)
                if seen >= want:
                    done.set()
            return ConsumeResult.SUCCESS

    pc = PushConsumer(config(broker), f"g-push-{RUN}", Listener(), {t3: FilterExpression("*")})
    pc.startup()
    done.wait(60)
    check(seen == want, f"PushConsumer consumed all 200 messages ({len(seen)} seen)")
    pc.shutdown()
    p3.shutdown()

    # --- kill -9 in the middle: nothing acknowledged lost, nothing acked redelivered ---
    t4 = f"t-crash-{RUN}"
    p4 = Producer(config(broker), (t4,))
    p4.startup()
    before = [p4.send(message(t4, f"crash {i}".encode(), keys=(f"c{i}",))).message_id for i in range(300)]
    c = simple_consumer(broker, f"g-crash-{RUN}", t4)
    acked = set()
    received_unacked = set()
    while len(acked) < 120:
        for m in c.receive(32, 3):
            if len(acked) < 120:
                c.ack(m)
                acked.add(m.message_id)
            else:
                received_unacked.add(m.message_id)
    broker.kill9()
    broker.start()
    after = []
    deadline = time.time() + 60
    while len(after) < 100 and time.time() < deadline:
        try:
            after.append(p4.send(message(t4, f"after {len(after)}".encode())).message_id)
        except Exception:
            time.sleep(0.2)
    check(len(after) == 100, "the same producer sends again after the broker restarted")
    remaining = set(before) - acked | set(after)
    got = []
    deadline = time.time() + 90
    while time.time() < deadline and not set(m.message_id for m in got) >= remaining:
        try:
            batch = c.receive(32, 3)
        except Exception:
            time.sleep(0.2)
            continue
        for m in batch:
            got.append(m)
            c.ack(m)
    got_ids = [m.message_id for m in got]
    check(set(got_ids) >= remaining, f"after kill -9: every un-acked message delivered ({len(remaining)} expected)")
    check(not (set(got_ids) & acked), "after kill -9: no acked message delivered again")
    check(len(got_ids) == len(set(got_ids)), "after kill -9: no duplicates among the deliveries")
    check(all(m.delivery_attempt == 2 for m in got if m.message_id in received_unacked),
          "messages in flight at the crash come back with attempt 2")
    c.shutdown()
    p4.shutdown()

    metrics = broker.metrics()
    check("ferry_acks_total" in metrics and f'topic="{t4}"' in metrics, "metrics endpoint reports acks and per-topic offsets")


if __name__ == "__main__":
    main()
