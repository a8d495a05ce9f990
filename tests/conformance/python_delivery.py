"""Delivery guarantees with the official RocketMQ 5 Python client.

Starts `ferry serve`, gives consumer groups their own delivery policies
through the admin API, and checks with the client's PushConsumer and
SimpleConsumer:

* a handler that always fails gets exactly max-attempts deliveries, then the
  message is in %DLQ%<group> once, with its original identity; an operator
  re-drives it and the group gets it again;
* a handler that fails twice then succeeds gets three deliveries and is
  never dead-lettered;
* a FIFO group with several message groups and one deliberately slow group:
  per-group order intact, each message once, the other groups not held up;
* SQL92 and TAG filters select exactly the matching messages, and a bad
  SQL92 expression is refused with ILLEGAL_FILTER_EXPRESSION and a position;
* a policy survives a broker restart and reaches the client in Settings.

Usage: python python_delivery.py path/to/ferry
Exits non-zero on the first failed check.
"""

import json
import threading
import time
import urllib.request

from rocketmq import (ConsumeResult, FilterExpression, MessageListener,
                      Producer, PushConsumer)
from rocketmq.grpc_protocol import FilterType

from python_client import (RUN, Broker, check, config, drain, message, run_suite,
                           simple_consumer, wait_for)


def put_policy(broker, group, **policy):
    req = urllib.request.Request(
        f"http://127.0.0.1:{broker.http}/v1/groups/{group}/policy",
        data=json.dumps(policy).encode(), method="PUT",
        headers={"content-type": "application/json"})
    return json.loads(urllib.request.urlopen(req, timeout=5).read())


def refusal(call):
    """Runs an admin call that must fail; returns its HTTP code and the
    message of its JSON body, or (None, "") when it succeeded."""
    try:
        call()
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read()).get("message", "")
    return None, ""


def post(broker, path):
    req = urllib.request.Request(f"http://127.0.0.1:{broker.http}{path}", data=b"", method="POST")
    return json.loads(urllib.request.urlopen(req, timeout=5).read())


class Recorder(MessageListener):
    """Counts deliveries per message id; fails the first `fail` of each."""

    def __init__(self, fail, slow=None, delay=0.0):
        self.fail = fail
        self.slow = slow
        self.delay = delay
        self.lock = threading.Lock()
        self.attempts = {}
        self.log = []  # (time, message_group, body) of each success

    def consume(self, msg):
        if self.slow is not None and msg.message_group == self.slow:
            time.sleep(self.delay)
        with self.lock:
            seen = self.attempts.setdefault(msg.message_id, [])
            seen.append(msg.delivery_attempt)
            if len(seen) <= self.fail:
                return ConsumeResult.FAILURE
            self.log.append((time.time(), msg.message_group, msg.body.decode()))
        return ConsumeResult.SUCCESS


def main():
    broker = Broker()
    run_suite(broker, lambda closers: run_checks(broker))


def run_checks(broker):
    retry_topic = f"t-retry-{RUN}"
    fifo_topic = f"t-fifo-{RUN}"
    filter_topic = f"t-filter-{RUN}"
    producer = Producer(config(broker), (retry_topic, fifo_topic, filter_topic))
    producer.startup()

    # --- policies through the admin API ---
    g_fail = f"g-always-fails-{RUN}"
    got = put_policy(broker, g_fail, max_delivery_attempts=3, backoff="1s")
    check(got["policy"]["max_delivery_attempts"] == 3 and got["policy"]["backoff_ms"] == [1000],
          "a group policy is set through the admin API")
    for bad, words in (({"backoff": "1s 5d"}, "unknown unit"),
                       ({"fifo": True, "colour": "red"}, "unknown field"),
                       ({"backoff": "1s", "backoff_ms": [1000]}, "not both"),
                       ({"max_delivery_attempts": 0}, "1 to 1000")):
        code, why = refusal(lambda: put_policy(broker, g_fail, **bad))
        check(code == 400 and words in why, f"policy {bad} is refused: {why}")
    check(broker.get_json(f"/v1/groups/{g_fail}/policy")["policy"]["max_delivery_attempts"] == 3,
          "a refused change leaves the policy as it was")
    code, _ = refusal(lambda: post(broker, f"/v1/groups/{g_fail}/dead-letters/99/redrive"))
    check(code == 404, "re-driving an unknown dead letter is refused (404)")

    # --- always failing: max-attempts deliveries, then one dead letter ---
    sent = producer.send(message(retry_topic, b"doomed", tag="t1", keys=("k-doomed",),
                                 props={"origin": "conformance"}))
    always = Recorder(fail=10**9)
    pc = PushConsumer(config(broker), g_fail, always, {retry_topic: FilterExpression("*")})
    pc.startup()
    dlq = f"%DLQ%{g_fail}"
    check(wait_for(lambda: broker.get_json(f"/v1/groups/{g_fail}/dead-letters")["dead_letters"], 30),
          "the always-failing message reached the dead-letter topic")
    time.sleep(2.5)  # a fourth delivery would have come by now (backoff 1 s)
    with always.lock:
        attempts = always.attempts.get(sent.message_id, [])
    check(attempts == [1, 2, 3], f"exactly 3 deliveries with attempts 1, 2, 3 (got {attempts})")
    pc.shutdown()
    letters = broker.get_json(f"/v1/groups/{g_fail}/dead-letters")["dead_letters"]
    check(len(letters) == 1 and letters[0]["attempts"] == 3 and letters[0]["topic"] == retry_topic,
          f"one dead letter, listed with its origin and 3 attempts: {letters}")
    reader = simple_consumer(broker, f"g-dlq-reader-{RUN}", dlq)
    dead = drain(reader, 1, rounds=5)
    check(len(dead) == 1, "the dead-letter topic is consumable like any topic")
    d = dead[0]
    check(d.message_id == sent.message_id and d.body == b"doomed" and d.tag == "t1"
          and "k-doomed" in d.keys and d.properties.get("origin") == "conformance",
          "the dead letter keeps its message id, body, tag, keys and properties")
    check(not drain(reader, 1, rounds=2), "exactly one dead letter")
    reader.shutdown()

    # --- re-drive: the operator sends it back; the group gets it again ---
    out = post(broker, f"/v1/groups/{g_fail}/dead-letters/{letters[0]['dlq_queue_offset']}/redrive")
    check(out["topic"] == retry_topic, "the dead letter is re-driven to its topic")
    again = simple_consumer(broker, g_fail, retry_topic)
    back = drain(again, 1, rounds=5, ack=False)
    check(len(back) == 1 and back[0].message_id == sent.message_id and back[0].delivery_attempt == 1,
          "the re-driven message comes back to its group as attempt 1")
    code, _ = refusal(lambda: post(broker, f"/v1/groups/{g_fail}/dead-letters/{letters[0]['dlq_queue_offset']}/redrive"))
    check(code == 409, "re-driving a message already in flight is refused (409)")
    again.ack(back[0])
    again.shutdown()

    # --- fails twice, then succeeds: three deliveries, no dead letter ---
    g_flaky = f"g-flaky-{RUN}"
    put_policy(broker, g_flaky, backoff="1s")
    flaky_topic = f"t-flaky-{RUN}"
    fp = Producer(config(broker), (flaky_topic,))
    fp.startup()
    flaky_sent = fp.send(message(flaky_topic, b"flaky"))
    flaky = Recorder(fail=2)
    pc = PushConsumer(config(broker), g_flaky, flaky, {flaky_topic: FilterExpression("*")})
    pc.startup()
    check(wait_for(lambda: flaky.log, 30), "the flaky handler succeeded in the end")
    time.sleep(2.5)
    pc.shutdown()
    fp.shutdown()
    check(flaky.attempts.get(flaky_sent.message_id) == [1, 2, 3],
          f"delivered three times, attempts 1, 2, 3 (got {flaky.attempts.get(flaky_sent.message_id)})")
    check(broker.get_json(f"/v1/groups/{g_flaky}/dead-letters")["dead_letters"] == [],
          "a message that fails transiently is never dead-lettered")

    # --- FIFO: per-group order, a slow group holds up nobody ---
    g_fifo = f"g-fifo-{RUN}"
    put_policy(broker, g_fifo, fifo=True, backoff="1s")
    groups = ["slow", "a", "b", "c"]
    per_group = 10
    for i in range(per_group):
        for g in groups:
            m = message(fifo_topic, f"{g}:{i}".encode())
            m.message_group = g
            producer.send(m)
    fifo = Recorder(fail=0, slow="slow", delay=0.4)
    pc = PushConsumer(config(broker), g_fifo, fifo, {fifo_topic: FilterExpression("*")})
    start = time.time()
    pc.startup()
    check(wait_for(lambda: len(fifo.log) == per_group * len(groups), 60),
          f"the FIFO group consumed all {per_group * len(groups)} messages ({len(fifo.log)})")
    pc.shutdown()
    check(pc.fifo is True, "the client learned FIFO mode from Settings")
    order = {}
    done_at = {}
    for t, g, body in fifo.log:
        order.setdefault(g, []).append(int(body.split(":")[1]))
        done_at[g] = t - start
    check(all(order[g] == list(range(per_group)) for g in groups),
          f"every message group in send order, each message once: {order}")
    fast_done = max(done_at[g] for g in groups if g != "slow")
    slow_done = done_at["slow"]
    print(f"     fast groups done after {fast_done:.2f} s, slow group after {slow_done:.2f} s")
    check(fast_done < slow_done / 2,
          "the fast groups finished while the slow group was still going")
    check(slow_done >= per_group * 0.4 * 0.9, "the slow group was really slow (one at a time)")

    # --- filters: SQL92 and TAG select exactly the matching messages ---
    want_sql, want_tag = set(), set()
    for i in range(40):
        region = "eu" if i % 2 else "us"
        tag = ["x", "y", "z"][i % 3]
        r = producer.send(message(filter_topic, f"f{i}".encode(), tag=tag,
                                  props={"n": str(i), "region": region}))
        if i >= 10 and region == "eu" and i not in (15, 16, 17):
            want_sql.add(r.message_id)
        if tag in ("x", "z"):
            want_tag.add(r.message_id)
    sql = "n >= 10 AND region = 'eu' AND NOT (n BETWEEN 15 AND 17)"
    from rocketmq import SimpleConsumer
    sc = SimpleConsumer(config(broker), f"g-sql-{RUN}",
                        {filter_topic: FilterExpression(sql, FilterType.SQL)}, await_duration=2)
    sc.startup()
    got = {m.message_id for m in drain(sc, len(want_sql), rounds=4)}
    got |= {m.message_id for m in drain(sc, 1, rounds=2)}
    check(got == want_sql, f"SQL92 filter: exactly the {len(want_sql)} matching messages ({len(got)})")
    sc.shutdown()
    tc = simple_consumer(broker, f"g-tag-{RUN}", filter_topic, expr="x||z")
    got = {m.message_id for m in drain(tc, len(want_tag), rounds=4)}
    got |= {m.message_id for m in drain(tc, 1, rounds=2)}
    check(got == want_tag, f"TAG filter: exactly the {len(want_tag)} matching messages ({len(got)})")
    tc.shutdown()
    bad = SimpleConsumer(config(broker), f"g-bad-sql-{RUN}",
                         {filter_topic: FilterExpression("n >= AND x", FilterType.SQL)}, await_duration=1)
    bad.startup()
    try:
        bad.receive(1, 5)
        check(False, "a bad SQL92 expression is refused")
    except Exception as e:
        text = str(e)
        check("ILLEGAL_FILTER_EXPRESSION" in text or "40010" in text, f"a bad SQL92 expression is refused: {text[:160]}")
        check("position" in text, "the refusal names the position of the error")
    bad.shutdown()

    # --- policies survive a restart ---
    broker.stop()
    broker.start()
    p = broker.get_json(f"/v1/groups/{g_fifo}/policy")
    check(p["own"] and p["policy"]["fifo"] is True, "group policies survive a restart")
    producer.shutdown()


if __name__ == "__main__":
    main()
