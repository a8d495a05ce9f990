"""Sends one half (transactional) message with the official Python client,
prints its message id, then kills its own process with SIGKILL: the
transaction is never ended by this producer, as after a crash between the
local transaction and EndTransaction. Its checker never decides.

Usage: python half_and_die.py ENDPOINT TOPIC BODY TAG [--key K] [--property NAME=VALUE]...
Used by python_transactions.py (the orphan a new producer resolves) and by
the dashboard test (the pending transaction it shows).
"""

import argparse
import os
import signal

from rocketmq import (ClientConfiguration, Credentials, Message, Producer, TransactionChecker,
                      TransactionResolution)


class Never(TransactionChecker):
    def check(self, msg):
        return TransactionResolution.TRANSACTION_RESOLUTION_UNSPECIFIED


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("endpoint")
    ap.add_argument("topic")
    ap.add_argument("body")
    ap.add_argument("tag")
    ap.add_argument("--key")
    ap.add_argument("--property", action="append", default=[])
    a = ap.parse_args()
    p = Producer(ClientConfiguration(a.endpoint, Credentials(), request_timeout=10), (a.topic,), Never())
    p.startup()
    m = Message()
    m.topic = a.topic
    m.body = a.body.encode()
    m.tag = a.tag
    if a.key:
        m.keys = a.key
    for prop in a.property:
        name, value = prop.split("=", 1)
        m.add_property(name, value)
    tx = p.begin_transaction()
    r = p.send(m, tx)
    print(r.message_id, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main()
