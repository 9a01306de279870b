#!/usr/bin/env python3
"""Writes the seed corpus of each fuzz target (fuzz/corpus/<target>/): a few small, valid
inputs per target, so the fuzzer starts from the formats rather than from nothing. Run it
again after changing a format; it only writes files named seed-*."""

import json
import os
import struct

from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# --- postcard (varints, length-prefixed strings and byte strings) -------------------------
def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pstr(s):
    b = s.encode() if isinstance(s, str) else s
    return varint(len(b)) + b


def record(scope, key, owner, inc, counter, value, deleted=False):
    return (pstr(scope) + pstr(key) + pstr(owner) + varint(inc) + varint(counter)
            + pstr(value) + bytes([1 if deleted else 0]))


def seq(items):
    return varint(len(items)) + b"".join(items)


# --- gossip: bodies after authentication, sealed packets before -----------------------------
ENDPOINT = {
    "task_id": "t1", "task_name": "web.1", "service_id": "s1", "service_name": "web",
    "node_id": "node-b", "addr": "10.0.1.5/24", "mac": "02:42:0a:00:01:05",
    "vtep": "192.0.2.2", "aliases": ["www"], "vip": "10.0.1.2/24", "dnsrr": False,
    "running": True,
}
endpoint_json = json.dumps(ENDPOINT, separators=(",", ":"))
membership = record("", "net", "node-b", 1000, 5, b"")
endpoint = record("net", "t1", "node-b", 1000, 6, endpoint_json.encode())
tombstone = record("net", "t2", "node-b", 1000, 7, b"", deleted=True)
bodies = {
    "swim": b"\x00" + pstr(b"\x00" * 8),
    "push": b"\x01" + seq([membership, endpoint]),
    "push-tombstone": b"\x01" + seq([membership, tombstone]),
    "sync-request": b"\x02" + seq([pstr("net")]) + seq([membership, endpoint]),
    "sync-reply": b"\x03" + seq([pstr("net")]) + seq([membership, endpoint, tombstone]),
}
for name, body in bodies.items():
    write("gossip_authenticated", name, body)

KEY = bytes([7] * 32)


def seal(plain, nonce):
    header = bytes([1]) + struct.pack(">I", 1) + nonce
    return header + ChaCha20Poly1305(KEY).encrypt(nonce, plain, header)


for i, (name, body) in enumerate(bodies.items()):
    packet = seal(pstr("node-b") + body, bytes([i]) * 12)
    write("gossip_sealed", name, packet)
    write("gossip_sealed", name + "-frame", struct.pack(">I", len(packet)) + packet)
write("gossip_sealed", "unknown-key", bytes([1, 0, 0, 0, 9]) + bytes(12) + bytes(20))
write("gossip_sealed", "frame-claims-much", struct.pack(">I", 64 * 1024 * 1024) + b"abc")

# --- endpoint records ---------------------------------------------------------------------
write("endpoint_record", "service", endpoint_json)
sandbox = dict(ENDPOINT, task_id="t1", service_id="", service_name="", aliases=[], vip="")
write("endpoint_record", "sandbox", json.dumps(sandbox))
dnsrr = dict(ENDPOINT, vip="", dnsrr=True, ports=[{"udp": False, "published": 8080, "target": 80}])
write("endpoint_record", "dnsrr-old-ports", json.dumps(dnsrr))


# --- DNS queries ----------------------------------------------------------------------------
def query(qid, name, qtype=1, qclass=1, edns=None, opcode=0):
    flags = 0x0100 | (opcode << 11)
    header = struct.pack(">HHHHHH", qid, flags, 1, 0, 0, 1 if edns else 0)
    qname = b"".join(bytes([len(l)]) + l.encode() for l in name.split(".") if l) + b"\x00"
    msg = header + qname + struct.pack(">HH", qtype, qclass)
    if edns:
        msg += b"\x00" + struct.pack(">HHIH", 41, edns, 0, 0)
    return msg


write("dns_query", "service", query(1, "web"))
write("dns_query", "alias-edns", query(2, "www", edns=1232))
write("dns_query", "tasks-dnsrr", query(3, "tasks.db"))
write("dns_query", "task-name", query(4, "web.1.example.org"))
write("dns_query", "aaaa", query(5, "web", qtype=28))
write("dns_query", "other-network", query(6, "secret"))
write("dns_query", "upstream", query(7, "example.com"))
write("dns_query", "chaos", query(8, "version.bind", qtype=16, qclass=3))
write("dns_query", "notify", query(9, "web", opcode=4))


# --- raft codec (first byte: message kind) ------------------------------------------------
def pb_field(num, wire, payload):
    return varint(num << 3 | wire) + payload


def pb_bytes(num, data):
    return pb_field(num, 2, pstr(data))


node = pb_bytes(1, "n1")
put_node = pb_bytes(2, node) + pb_field(15, 0, varint(0))
txn = pb_bytes(1, put_node)
log_id = varint(2) + varint(1) + varint(9)  # leader (term, node), index
vote = varint(3) + varint(1) + b"\x01"  # leader (term, node), committed
write("raft_codec", "entry-blank", b"\x00" + log_id + b"\x00")
write("raft_codec", "entry-normal", b"\x00" + log_id + b"\x01" + pstr(txn))
write("raft_codec", "vote", b"\x01" + vote)
write("raft_codec", "log-id", b"\x02" + log_id)
write("raft_codec", "append-entries",
      b"\x04" + vote + b"\x01" + log_id + b"\x01" + log_id + seq([log_id + b"\x01" + pstr(txn)]))
write("raft_codec", "vote-request", b"\x06" + vote + b"\x01" + log_id)
write("raft_codec", "store-request", b"\x0b" + pstr(txn))

# --- store transactions (length-delimited, applied in order) ------------------------------
def ld(msg):
    return varint(len(msg)) + msg


def op(field, obj, expect=None):
    out = pb_bytes(field, obj)
    if expect is not None:
        out += pb_field(15, 0, varint(expect))
    return out


network = pb_bytes(1, "w1")
service = pb_bytes(1, "s1")
task = pb_bytes(1, "t1")
write("store_apply", "create-then-update",
      ld(pb_bytes(1, op(2, node, 0)) + pb_bytes(1, op(4, network, 0)))
      + ld(pb_bytes(1, op(2, node, 1)))
      + ld(pb_bytes(1, op(6, service)) + pb_bytes(1, op(8, task))))
write("store_apply", "conflict-and-delete",
      ld(pb_bytes(1, op(2, node, 0))) + ld(pb_bytes(1, op(2, node, 0)))
      + ld(pb_bytes(1, pb_bytes(3, "n1") + pb_field(15, 0, varint(1)))))

# --- CLI flags ------------------------------------------------------------------------------
for i, text in enumerate([
    "8080:80", "53/udp", "published=8080,target=80,protocol=udp,mode=host", "80",
    "appnet", "name=appnet,alias=db,alias=pg", "10.20.0.0/24", "10.20.0.1/24",
]):
    write("cli_flags", str(i), text)

# --- network allocation (subnet, gateway, ip range, pools, mask, existing subnets) ----------
for i, text in enumerate([
    "\n\n\n\n\n10.0.0.0/24\n10.0.1.0/24",
    "10.1.0.0/24\n10.1.0.254\n10.1.0.128/25\n\n\n",
    "\n\n\n224.0.0.0/3,10.0.0.0/8\n29\n",
    "\n\n\n0.0.0.0/1\n29\n1.0.0.0/9\n0.0.0.0/8",
    "172.30.1.0/24\n\n\n\n\n",
    "\n\n\n10.50.0.0/23\n24\n10.50.0.0/24\n10.50.1.0/24",
]):
    write("network_alloc", str(i), text)
