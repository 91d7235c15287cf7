"""Consumes COUNT messages from QUEUE with pika and prints one JSON line each:
body (parsed), delivery_mode, headers, routing_key.

usage: consume.py URL QUEUE COUNT TIMEOUT_SECONDS
"""
import json
import sys
import time

import pika

url, queue, count, timeout = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
got = 0
deadline = time.time() + timeout
while got < count and time.time() < deadline:
    method, props, body = ch.basic_get(queue=queue, auto_ack=False)
    if method is None:
        time.sleep(0.05)
        continue
    headers = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in (props.headers or {}).items()}
    print(json.dumps({
        "body": json.loads(body),
        "delivery_mode": props.delivery_mode,
        "headers": headers,
        "routing_key": method.routing_key,
    }), flush=True)
    ch.basic_ack(method.delivery_tag)
    got += 1
conn.close()
sys.exit(0 if got == count else 1)
