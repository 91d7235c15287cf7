"""Publishes one event the way the FinSight Python services do (pika).

Declares the SPEC section 5 topology first, with the same arguments the Python
services use, so a mismatch with what the Rust bus declared shows up as a
406 PRECONDITION_FAILED here.

usage: declare_and_publish.py URL EXCHANGE DLX DLQ QUEUE ROUTING_KEY EVENT_TYPE CORRELATION_ID BODY_JSON
"""
import datetime
import sys

import pika

url, exchange, dlx, dlq, queue, routing_key, event_type, correlation_id, body = sys.argv[1:10]
conn = pika.BlockingConnection(pika.URLParameters(url))
ch = conn.channel()
ch.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
ch.exchange_declare(exchange=dlx, exchange_type="direct", durable=True)
ch.queue_declare(queue=dlq, durable=True)
ch.queue_bind(queue=dlq, exchange=dlx, routing_key="dead.letter")
ch.queue_declare(
    queue=queue,
    durable=True,
    arguments={
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": "dead.letter",
        "x-message-ttl": 300000,
    },
)
ch.queue_bind(queue=queue, exchange=exchange, routing_key="*." + queue)
ch.confirm_delivery()
ch.basic_publish(
    exchange=exchange,
    routing_key=routing_key,
    body=body.encode(),
    properties=pika.BasicProperties(
        delivery_mode=2,
        content_type="application/json",
        headers={
            "event_type": event_type,
            # The Python services write a naive UTC timestamp.
            "timestamp": datetime.datetime.utcnow().isoformat(),
            "correlation_id": correlation_id,
        },
    ),
    mandatory=True,
)
conn.close()
print("published")
