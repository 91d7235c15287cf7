"""Python side of the cache wire-format test (SPEC §3), written like the
Python services' redis-py code: value = json.dumps(v) in UTF-8, gzip of it
when compressed, TTL set with the value (SETEX).

usage: compat.py URL read PREFIX        -> prints {"plain": {...}, "gz": {...}}
       compat.py URL write PREFIX JSON  -> SETEX PREFIX+py_plain / PREFIX+py_gz
"""
import gzip
import json
import sys

import redis


def main() -> None:
    url, mode, prefix = sys.argv[1:4]
    r = redis.Redis.from_url(url)
    if mode == "read":
        out = {}
        for key, compressed in (("plain", False), ("gz", True)):
            raw = r.get(prefix + key)
            if raw is None:
                raise SystemExit(f"{prefix + key} is missing")
            if compressed:
                raw = gzip.decompress(raw)
            out[key] = {"value": json.loads(raw.decode("utf-8")), "ttl": r.ttl(prefix + key)}
        print(json.dumps(out))
    elif mode == "write":
        value = json.loads(sys.argv[4])
        r.setex(prefix + "py_plain", 300, json.dumps(value))
        r.setex(prefix + "py_gz", 300, gzip.compress(json.dumps(value).encode("utf-8")))
    else:
        raise SystemExit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
