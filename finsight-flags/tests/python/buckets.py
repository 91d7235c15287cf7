"""The Python services' bucketing and variant selection, as a reference.

Reads {"cases": [{"flag_key", "user_id"|null, "tenant_id"|null, "weights": [..]}]}
on stdin and prints, per case, the bucket and the index of the selected
variant (or null), computed exactly as the Python services do:
int(md5(key).hexdigest()[:8], 16) % 100 and the float walk over weights.
Standard library only.
"""
import hashlib
import json
import sys


def bucket(flag_key, user_id, tenant_id):
    if user_id is not None:
        key = f"{flag_key}:user:{user_id}"
    elif tenant_id is not None:
        key = f"{flag_key}:tenant:{tenant_id}"
    else:
        return None
    return int(hashlib.md5(key.encode("utf-8")).hexdigest()[:8], 16) % 100


def pick(b, weights):
    total = sum(weights)
    if b is None or not weights or total == 0:
        return None
    scaled = (b / 100.0) * total
    cumulative = 0
    for i, w in enumerate(weights):
        cumulative += w
        if scaled < cumulative:
            return i
    return None


cases = json.load(sys.stdin)["cases"]
out = []
for c in cases:
    b = bucket(c["flag_key"], c.get("user_id"), c.get("tenant_id"))
    out.append({"bucket": b, "variant": pick(b, c["weights"])})
json.dump(out, sys.stdout)
