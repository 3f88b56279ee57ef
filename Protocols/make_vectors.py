#!/usr/bin/env python3
"""Writes vectors/valid.hex, vectors/invalid.hex and vectors/handshake.txt for wire protocol v1.

An encoder written from pager-wire-v1.md alone, independent of the Swift implementation:
the Swift tests decode these frames, compare with the `meaning` lines, and re-encode them,
so the two implementations check each other.  handshake.txt is a whole authenticated
handshake (section 5) for a given key, nonces and X25519 private keys: every frame, both
transcript hashes, the derived keys and both MACs, computed here with X25519 written from
RFC 7748 and HKDF from RFC 5869 (Python's hashlib and hmac only for SHA-256 and HMAC), and
the sealed records of section 5.1 with AES-GCM from the `cryptography` package (Debian
`python3-cryptography`), the one primitive not written here.
Run: python3 Protocols/make_vectors.py
"""
import hashlib
import hmac
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
MAGIC = 0x50475231
T = dict(HELLO=0x0001, WELCOME=0x0002, AUTH_CHALLENGE=0x0003, AUTH_RESPONSE=0x0004, AUTH_CONFIRM=0x0005,
         REGION=0x0010, PAGE_REQUEST=0x0020, PAGE_DATA=0x0021, INVALIDATE=0x0030, INVALIDATE_ACK=0x0031, SWITCHED=0x0032,
         PUSH_COMPLETE=0x0040, COMPLETE=0x0041, COMPLETE_ACK=0x0042, RECEIVED=0x0043, PUSH_READ=0x0044, PING=0x0050, PONG=0x0051,
         RDMA_KEY=0x0060, GOODBYE=0x007E, ERROR=0x007F)
CODES = {1: "malformed-frame", 2: "unsupported-version", 3: "unknown-region", 4: "out-of-range", 5: "misaligned",
         6: "too-large", 7: "authentication-failed", 8: "io-error", 9: "unexpected-message", 10: "shutting-down",
         11: "internal-error", 12: "timeout"}


def crc32c(data):
    crc = 0xFFFFFFFF
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283


def frame(name, flags, payload):
    return struct.pack(">HHI", T[name], flags, len(payload)) + payload


def string(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


def hx(v):
    return "0x%x" % v


def flagnames(flags, names):
    out = [n for bit, n in names if flags & bit]
    return "|".join(out) if out else "-"


def hello(minv, maxv, features, maxp, session, token, client, identity="", channel=None):
    """channel: 0 demand, 1 push; by default a new session's demand, a resume's push."""
    if channel is None:
        channel = 1 if session else 0
    p = struct.pack(">IHHQIB3xQ", MAGIC, minv, maxv, features, maxp, channel, session) + token + string(client) + string(identity)
    m = f'HELLO min-version={minv} max-version={maxv} features={hx(features)} max-payload={hx(maxp)} ' \
        f'channel={["demand", "push"][channel]} resume-session={hx(session)} resume-token={token.hex()} client="{client}" key-identity="{identity}"'
    return frame("HELLO", 0, p), m


def welcome(version, features, maxp, count, session, token):
    p = struct.pack(">HHQIIQ", version, 0, features, maxp, count, session) + token
    m = f"WELCOME version={version} features={hx(features)} max-payload={hx(maxp)} regions={count} " \
        f"session={hx(session)} resume-token={token.hex()}"
    return frame("WELCOME", 0, p), m


def region(rid, shift, flags, length, name):
    p = struct.pack(">IBBHQ", rid, shift, flags, 0, length) + string(name)
    m = f'REGION id={rid} page-shift={shift} flags={"live" if flags & 1 else "-"} length={hx(length)} name="{name}"'
    return frame("REGION", 0, p), m


def page_request(flags, rid, region_id, offset, length):
    p = struct.pack(">IIQQ", rid, region_id, offset, length)
    m = f"PAGE_REQUEST flags={flagnames(flags, [(1, 'urgent'), (2, 'prefetch')])} request={rid} region={region_id} " \
        f"offset={hx(offset)} length={hx(length)}"
    return frame("PAGE_REQUEST", flags, p), m


def page_data(flags, rid, region_id, offset, length, encoding, data=b"", checksums=None, page_map=None):
    p = struct.pack(">IIQQB7x", rid, region_id, offset, length, encoding)
    if page_map is not None:
        p += b"".join(struct.pack(">Q", w) for w in page_map)
    if checksums is not None:
        flags |= 4
        p += b"".join(struct.pack(">I", c) for c in checksums)
    p += data
    m = f"PAGE_DATA flags={flagnames(flags, [(1, 'urgent'), (2, 'push'), (4, 'checksums')])} request={rid} " \
        f"region={region_id} offset={hx(offset)} length={hx(length)} encoding={['raw', 'zero', 'compressed', 'sparse'][encoding]}"
    if page_map is not None:
        m += " page-map=[" + ",".join(hx(w) for w in page_map) + "]"
    if checksums is not None:
        m += " checksums=[" + ",".join(hx(c) for c in checksums) + "]"
    if encoding != 1:
        m += f" data-bytes={len(data)} data-crc32c={hx(crc32c(data))}"
    return frame("PAGE_DATA", flags, p), m


def page_bytes(index):
    """A recognisable 4 KiB page: bytes (index * 31 + i) mod 251."""
    return bytes((index * 31 + i) % 251 for i in range(4096))


def valid():
    v = []
    v.append(("a new session offering checksums, invalidation and huge pages",
              *hello(1, 1, 0x61, 0x210000, 0, bytes(16), "pagerd-dest@host-b")))
    v.append(("a resume of session 0x1122334455667788, versions 1 to 3",
              *hello(1, 3, 0x08, 0x10000, 0x1122334455667788, bytes(range(16)), "")))
    v.append(("a resumed demand connection of session 0x1122334455667788 (authenticated: zeros for the token)",
              *hello(1, 1, 0x0c, 0x210000, 0x1122334455667788, bytes(16), "pagerd-dest@host-b", "pager-1", channel=0)))
    v.append(("the server accepts version 1 with checksums and announces two regions",
              *welcome(1, 0x01, 0x210000, 2, 0x0123456789ABCDEF, bytes([0xA5] * 16))))
    v.append(("an authenticated new session with the key named pager-1, max_payload above the maximum (kept as sent)",
              *hello(1, 1, 0x6d, 0x7fffffff, 0, bytes(16), "pagerd-dest@host-b", "pager-1")))
    nonce = bytes(range(32))
    share = bytes(range(64, 96))
    v.append(("authentication challenge", frame("AUTH_CHALLENGE", 0, nonce + share),
              f"AUTH_CHALLENGE nonce={nonce.hex()} share={share.hex()}"))
    mac = bytes(range(32, 64))
    v.append(("authentication response", frame("AUTH_RESPONSE", 0, nonce[::-1] + share[::-1] + mac),
              f"AUTH_RESPONSE client-nonce={nonce[::-1].hex()} share={share[::-1].hex()} mac={mac.hex()}"))
    v.append(("authentication confirmation", frame("AUTH_CONFIRM", 0, mac[::-1]), f"AUTH_CONFIRM mac={mac[::-1].hex()}"))
    v.append(("a 1 GiB region of 4 KiB pages", *region(1, 12, 0, 1 << 30, "vm.ram")))
    v.append(("a live 64 MiB hugetlbfs region of 2 MiB pages", *region(2, 21, 1, 64 << 20, "/dev/hugepages/vm")))
    v.append(("an urgent demand fault for one 4 KiB page", *page_request(1, 7, 1, 0x200000, 0x1000)))
    v.append(("a prefetch hint for 64 KiB", *page_request(2, 8, 1, 0x201000, 0x10000)))
    v.append(("an ordinary request for a whole 2 MiB page", *page_request(0, 9, 2, 0x400000, 0x200000)))
    v.append(("the reply to request 7: one raw 4 KiB page",
              *page_data(1, 7, 1, 0x200000, 0x1000, 0, page_bytes(512))))
    two = page_bytes(3) + page_bytes(4)
    v.append(("background push of two raw pages with per-page CRC-32C",
              *page_data(2, 0, 1, 0x3000, 0x2000, 0, two, [crc32c(page_bytes(3)), crc32c(page_bytes(4))])))
    v.append(("a whole 1 GiB region is zero: no bytes cross the wire", *page_data(2, 0, 1, 0, 1 << 30, 1)))
    v.append(("the reply to request 9 says the 2 MiB page is zero", *page_data(0, 9, 2, 0x400000, 0x200000, 1)))
    # Sparse: 8 pages, data in 0, 1, 4 and 6 (map 0b01010011), the zero pages carry nothing.
    sparse = page_bytes(20) + page_bytes(21) + page_bytes(24) + page_bytes(26)
    v.append(("push of 8 pages mixing data and zero pages: the page map, then the 4 data pages",
              *page_data(2, 0, 1, 0x10000, 0x8000, 3, sparse, page_map=[0x53])))
    v.append(("a sparse reply of 70 pages with checksums: a two-word map, one checksum per data page",
              *page_data(1, 11, 1, 0x100000, 70 * 0x1000, 3, page_bytes(30) + page_bytes(31),
                         [crc32c(page_bytes(30)), crc32c(page_bytes(31))], page_map=[0x1, 0x20])))
    v.append(("compressed data (reserved encoding; the codec carries the bytes)",
              *page_data(2, 0, 1, 0x5000, 0x1000, 2, b"\x01\x02\x03")))
    inv = struct.pack(">IIII", 3, 1, 2, 0) + struct.pack(">QQQQ", 0, 0x1000, 0x200000, 0x4000)
    v.append(("pages written after they were sent are stale", frame("INVALIDATE", 0, inv),
              "INVALIDATE sequence=3 region=1 ranges=[0x0+0x1000,0x200000+0x4000]"))
    v.append(("acknowledgement of INVALIDATE 3", frame("INVALIDATE_ACK", 0, struct.pack(">II", 3, 1)),
              "INVALIDATE_ACK sequence=3 region=1"))
    v.append(("pre-copy of region 1 switched to post-copy after INVALIDATE 3", frame("SWITCHED", 0, struct.pack(">II", 1, 3)),
              "SWITCHED region=1 last-sequence=3"))
    held = struct.pack(">II", 1, 2) + struct.pack(">QQQQ", 0, 0x200000, 0x400000, 0x1000)
    v.append(("after a resume, the destination holds two runs of region 1", frame("RECEIVED", 0, held),
              "RECEIVED flags=- region=1 ranges=[0x0+0x200000,0x400000+0x1000]"))
    v.append(("the first of several RECEIVED frames for region 2", frame("RECEIVED", 1, struct.pack(">IIQQ", 2, 1, 0x1000, 0x3000)),
              "RECEIVED flags=more region=2 ranges=[0x1000+0x3000]"))
    v.append(("after a resume, the destination holds nothing of region 3", frame("RECEIVED", 0, struct.pack(">II", 3, 0)),
              "RECEIVED flags=- region=3 ranges=[]"))
    v.append(("a resume during pre-copy: staged pages of live region 1, more to follow", frame("RECEIVED", 3, struct.pack(">IIQQ", 1, 1, 0, 0x10000)),
              "RECEIVED flags=more|staged region=1 ranges=[0x0+0x10000]"))
    v.append(("every page of region 1 was sent", frame("PUSH_COMPLETE", 0, struct.pack(">IIQ", 1, 0, 1 << 30)),
              "PUSH_COMPLETE region=1 bytes=0x40000000"))
    v.append(("the destination holds every page of every region",
              frame("COMPLETE", 0, struct.pack(">IIQ", 0xFFFFFFFF, 0, (1 << 30) + (64 << 20))),
              "COMPLETE region=all resident-bytes=0x44000000"))
    v.append(("completion acknowledged", frame("COMPLETE_ACK", 0, struct.pack(">II", 0xFFFFFFFF, 0)),
              "COMPLETE_ACK region=all"))
    v.append(("keepalive", frame("PING", 0, struct.pack(">QQ", 42, 123456789)), "PING token=0x2a timestamp=0x75bcd15"))
    v.append(("keepalive answer", frame("PONG", 0, struct.pack(">QQ", 42, 123456789)), "PONG token=0x2a timestamp=0x75bcd15"))
    v.append(("the push of 512 KiB of region 1 left to an RDMA READ",
              frame("PUSH_READ", 0, struct.pack(">IIQ", 1, 512 << 10, 0x40000000)),
              "PUSH_READ region=1 offset=0x40000000 length=0x80000"))
    v.append(("RDMA memory key for region 1",
              frame("RDMA_KEY", 0, struct.pack(">IIQQ", 1, 0xABCD, 0x7F0000000000, 1 << 30)),
              "RDMA_KEY region=1 rkey=0xabcd address=0x7f0000000000 length=0x40000000"))
    v.append(("clean end", frame("GOODBYE", 0, b""), "GOODBYE"))
    msg = "region 5 is not served (served: 1, 2)"
    v.append(("request 11 named a region the source does not serve",
              frame("ERROR", 0, struct.pack(">HHI", 3, 0, 11) + string(msg)),
              f'ERROR code=unknown-region request=11 message="{msg}"'))
    msg = "server speaks versions 1-1, client offered 2-3"
    v.append(("version mismatch ends the session", frame("ERROR", 0, struct.pack(">HHI", 2, 0, 0) + string(msg)),
              f'ERROR code=unsupported-version request=0 message="{msg}"'))
    return v


def invalid():
    ok_req = struct.pack(">IIQQ", 7, 1, 0x200000, 0x1000)
    data_hdr = lambda length, enc, flags=0: struct.pack(">IIQQB7x", 1, 1, 0, length, enc)
    hello_head = struct.pack(">IHHQIIQ", MAGIC, 1, 1, 0, 0x210000, 0, 0) + bytes(16)
    v = []
    v.append(("type 0x0099 does not exist", "unknown-message-type", struct.pack(">HHI", 0x99, 0, 0)))
    v.append(("GOODBYE defines no flags", "unknown-flags", struct.pack(">HHI", 0x7E, 1, 0)))
    v.append(("PAGE_REQUEST flag bit 2 is undefined", "unknown-flags", frame("PAGE_REQUEST", 4, ok_req)))
    v.append(("a frame announcing 16 MiB", "frame-too-large", struct.pack(">HHI", 0x21, 0, 16 << 20)))
    v.append(("PAGE_REQUEST cut after the offset", "truncated-payload", frame("PAGE_REQUEST", 1, ok_req[:16])))
    v.append(("PAGE_REQUEST with 4 extra bytes", "trailing-bytes", frame("PAGE_REQUEST", 1, ok_req + b"\0\0\0\0")))
    v.append(("offset not a multiple of 4096", "misaligned",
              frame("PAGE_REQUEST", 1, struct.pack(">IIQQ", 7, 1, 0x200201, 0x1000))))
    v.append(("length not a multiple of 4096", "misaligned",
              frame("PAGE_REQUEST", 1, struct.pack(">IIQQ", 7, 1, 0x200000, 100))))
    v.append(("zero length", "field-out-of-range", frame("PAGE_REQUEST", 1, struct.pack(">IIQQ", 7, 1, 0, 0))))
    v.append(("offset + length passes 2^64", "field-out-of-range",
              frame("PAGE_REQUEST", 1, struct.pack(">IIQQ", 7, 1, 0xFFFFFFFFFFFFF000, 0x2000))))
    v.append(("urgent and prefetch together", "field-out-of-range", frame("PAGE_REQUEST", 3, ok_req)))
    v.append(("PUSH_READ of more than 2 MiB", "field-out-of-range", frame("PUSH_READ", 0, struct.pack(">IIQ", 1, 4 << 20, 0))))
    v.append(("PUSH_READ length not a multiple of 4096", "misaligned", frame("PUSH_READ", 0, struct.pack(">IIQ", 1, 0x1800, 0))))
    v.append(("PUSH_READ of nothing", "field-out-of-range", frame("PUSH_READ", 0, struct.pack(">IIQ", 1, 0, 0x1000))))
    v.append(("raw PAGE_DATA with fewer bytes than its length", "field-out-of-range",
              frame("PAGE_DATA", 0, data_hdr(0x2000, 0) + bytes(4096))))
    v.append(("unknown encoding 7", "field-out-of-range", frame("PAGE_DATA", 0, data_hdr(0x1000, 7) + bytes(4096))))
    v.append(("zero encoding with checksums", "field-out-of-range", frame("PAGE_DATA", 4, data_hdr(0x1000, 1))))
    v.append(("urgent and push together", "field-out-of-range", frame("PAGE_DATA", 3, data_hdr(0x1000, 1))))
    v.append(("reserved byte after the encoding is set", "reserved-not-zero",
              frame("PAGE_DATA", 0, struct.pack(">IIQQB", 1, 1, 0, 0x1000, 1) + b"\0\x01\0\0\0\0\0")))
    sparse_hdr = struct.pack(">IIQQB7x", 1, 1, 0, 0x3000, 3)
    v.append(("sparse PAGE_DATA whose map is cut short", "truncated-payload", frame("PAGE_DATA", 0, sparse_hdr + bytes(4))))
    v.append(("sparse map with a bit past the range's last page", "field-out-of-range",
              frame("PAGE_DATA", 0, sparse_hdr + struct.pack(">Q", 0x9) + bytes(8192))))
    v.append(("sparse map with no data page (that is the zero encoding)", "field-out-of-range",
              frame("PAGE_DATA", 0, sparse_hdr + struct.pack(">Q", 0))))
    v.append(("sparse data shorter than the map's data pages", "field-out-of-range",
              frame("PAGE_DATA", 0, sparse_hdr + struct.pack(">Q", 0x5) + bytes(4096))))
    v.append(("checksum array cut short", "truncated-payload",
              frame("PAGE_DATA", 4, data_hdr(0x2000, 0) + b"\0\0\0\1")))
    v.append(("HELLO from a peer speaking something else", "bad-magic",
              frame("HELLO", 0, b"GET / HTTP/1.1\r\n" + bytes(40))))
    v.append(("HELLO with min_version above max_version", "field-out-of-range",
              frame("HELLO", 0, struct.pack(">IHHQIIQ", MAGIC, 3, 2, 0, 0x210000, 0, 0) + bytes(16) + string("x"))))
    v.append(("HELLO with max_payload below 64 KiB", "field-out-of-range",
              frame("HELLO", 0, struct.pack(">IHHQIIQ", MAGIC, 1, 1, 0, 4096, 0, 0) + bytes(16) + string("x"))))
    v.append(("HELLO client name longer than 64 bytes", "field-out-of-range",
              frame("HELLO", 0, hello_head + string("n" * 65) + string(""))))
    v.append(("HELLO client name that is not UTF-8", "invalid-utf8",
              frame("HELLO", 0, hello_head + struct.pack(">H", 2) + b"\xc3\x28" + string(""))))
    v.append(("HELLO key identity longer than 64 bytes", "field-out-of-range",
              frame("HELLO", 0, hello_head + string("x") + string("k" * 65))))
    v.append(("HELLO without its key identity (a HELLO of an older draft)", "truncated-payload",
              frame("HELLO", 0, hello_head + string("x"))))
    v.append(("REGION with 8 KiB pages", "field-out-of-range",
              frame("REGION", 0, struct.pack(">IBBHQ", 1, 13, 0, 0, 1 << 20) + string("r"))))
    v.append(("REGION length not a multiple of its 2 MiB pages", "field-out-of-range",
              frame("REGION", 0, struct.pack(">IBBHQ", 1, 21, 0, 0, 0x1000) + string("r"))))
    v.append(("REGION with an undefined flag bit", "reserved-not-zero",
              frame("REGION", 0, struct.pack(">IBBHQ", 1, 12, 0x80, 0, 0x1000) + string("r"))))
    v.append(("INVALIDATE whose count disagrees with its payload", "field-out-of-range",
              frame("INVALIDATE", 0, struct.pack(">IIII", 1, 1, 1000000, 0) + struct.pack(">QQ", 0, 0x1000))))
    v.append(("HELLO whose channel is neither demand nor push", "field-out-of-range",
              frame("HELLO", 0, struct.pack(">IHHQIB3xQ", MAGIC, 1, 1, 8, 0x210000, 2, 5) + bytes(16) + string("x") + string(""))))
    v.append(("HELLO of a new session on the push channel", "field-out-of-range",
              frame("HELLO", 0, struct.pack(">IHHQIB3xQ", MAGIC, 1, 1, 8, 0x210000, 1, 0) + bytes(16) + string("x") + string(""))))
    v.append(("HELLO with its reserved bytes after channel set", "reserved-not-zero",
              frame("HELLO", 0, struct.pack(">IHHQIBBBBQ", MAGIC, 1, 1, 8, 0x210000, 0, 0, 1, 0, 0) + bytes(16) + string("x") + string(""))))
    v.append(("RECEIVED whose count disagrees with its payload", "field-out-of-range",
              frame("RECEIVED", 0, struct.pack(">II", 1, 2) + struct.pack(">QQ", 0, 0x1000))))
    v.append(("RECEIVED with ranges out of order", "field-out-of-range",
              frame("RECEIVED", 0, struct.pack(">II", 1, 2) + struct.pack(">QQQQ", 0x4000, 0x1000, 0, 0x1000))))
    v.append(("RECEIVED with touching ranges (one map, one spelling)", "field-out-of-range",
              frame("RECEIVED", 0, struct.pack(">II", 1, 2) + struct.pack(">QQQQ", 0, 0x1000, 0x1000, 0x1000))))
    v.append(("RECEIVED with a misaligned range", "misaligned",
              frame("RECEIVED", 0, struct.pack(">II", 1, 1) + struct.pack(">QQ", 0x800, 0x1000))))
    v.append(("RECEIVED with an undefined flag", "unknown-flags",
              frame("RECEIVED", 4, struct.pack(">II", 1, 0))))
    v.append(("INVALIDATE with no ranges", "field-out-of-range", frame("INVALIDATE", 0, struct.pack(">IIII", 1, 1, 0, 0))))
    v.append(("ERROR whose message length passes the payload", "truncated-payload",
              frame("ERROR", 0, struct.pack(">HHIH", 1, 0, 0, 500) + b"short")))
    v.append(("WELCOME with a reserved field set", "reserved-not-zero",
              frame("WELCOME", 0, struct.pack(">HHQIIQ", 1, 9, 0, 0x210000, 0, 1) + bytes(16))))
    v.append(("SWITCHED without its last_sequence", "truncated-payload", frame("SWITCHED", 0, struct.pack(">I", 1))))
    v.append(("AUTH_CHALLENGE with a nonce and no share", "truncated-payload", frame("AUTH_CHALLENGE", 0, bytes(32))))
    v.append(("AUTH_RESPONSE of 64 bytes (no share)", "truncated-payload", frame("AUTH_RESPONSE", 0, bytes(64))))
    v.append(("AUTH_CONFIRM with a byte after its mac", "trailing-bytes", frame("AUTH_CONFIRM", 0, bytes(33))))
    return v


def spaced(b):
    h = b.hex()
    return " ".join(h[i:i + 8] for i in range(0, len(h), 8))


def write(name, blocks):
    with open(os.path.join(HERE, "vectors", name), "w") as f:
        f.write(f"# Pager wire protocol v1 test vectors ({name}). Generated by Protocols/make_vectors.py;\n"
                "# the format is described in Protocols/pager-wire-v1.md section 8.\n")
        for comment, second, raw in blocks:
            f.write(f"\n# {comment}\n{second}\nhex: {spaced(raw)}\n")


# --- Section 5: a whole authenticated handshake -------------------------------------------

def x25519(scalar, u):
    """RFC 7748 section 5: the Montgomery ladder on Curve25519."""
    p, a24 = 2 ** 255 - 19, 121665
    k = bytearray(scalar)
    k[0] &= 248
    k[31] &= 127
    k[31] |= 64
    k = int.from_bytes(k, "little")
    x1 = int.from_bytes(u, "little") & ((1 << 255) - 1)
    x2, z2, x3, z3, swap = 1, 0, x1, 1, 0
    for t in reversed(range(255)):
        bit = (k >> t) & 1
        swap ^= bit
        if swap:
            x2, x3, z2, z3 = x3, x2, z3, z2
        swap = bit
        a, b, c, d = x2 + z2, x2 - z2, x3 + z3, x3 - z3
        aa, bb = a * a, b * b
        e, da, cb = aa - bb, d * a, c * b
        x3, z3 = (da + cb) ** 2 % p, x1 * (da - cb) ** 2 % p
        x2, z2 = aa * bb % p, e * (aa + a24 * e) % p
    if swap:
        x2, z2 = x3, z3
    return (x2 * pow(z2, p - 2, p) % p).to_bytes(32, "little")


BASE = (9).to_bytes(32, "little")
# RFC 7748 section 6.1: Alice's and Bob's keys and their shared secret.
_alice = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
_bob = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
assert x25519(_bob, BASE).hex() == "de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f"
assert x25519(_alice, BASE).hex() == "8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a"
assert x25519(_alice, x25519(_bob, BASE)).hex() == "4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742"


def hkdf_extract(salt, ikm):
    return hmac.new(salt, ikm, hashlib.sha256).digest()


def hkdf_expand(prk, info, n):
    out, block, i = b"", b"", 1
    while len(out) < n:
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        out += block
        i += 1
    return out[:n]


def handshake(psk, identity, hello_frame, resume_token, server_nonce, server_private, client_nonce, client_private,
              answer_frames):
    """One connection's handshake; returns the named values in wire order."""
    server_share, client_share = x25519(server_private, BASE), x25519(client_private, BASE)
    challenge = frame("AUTH_CHALLENGE", 0, server_nonce + server_share)
    response_head = struct.pack(">HHI", T["AUTH_RESPONSE"], 0, 96) + client_nonce + client_share
    h1 = hashlib.sha256(hello_frame + challenge + response_head).digest()
    shared = x25519(client_private, server_share)
    assert shared == x25519(server_private, client_share)
    secret = hkdf_extract(h1, psk + shared + resume_token)
    keys = {label: hkdf_expand(secret, f"pager-v1 {label}".encode(), 32)
            for label in ("client mac", "server mac", "client write", "server write")}
    client_mac = hmac.new(keys["client mac"], h1, hashlib.sha256).digest()
    response = response_head + client_mac
    h2 = hashlib.sha256(hello_frame + challenge + response + b"".join(answer_frames)).digest()
    confirm = frame("AUTH_CONFIRM", 0, hmac.new(keys["server mac"], h2, hashlib.sha256).digest())
    sealed = seal_records(keys, answer_frames[0])
    return [("psk-identity", identity.encode()), ("psk", psk), ("resume-token", resume_token),
            ("server-nonce", server_nonce), ("server-private", server_private),
            ("client-nonce", client_nonce), ("client-private", client_private),
            ("hello", hello_frame), ("auth-challenge", challenge), ("auth-response", response)] + \
           [("answer", f) for f in answer_frames] + \
           [("auth-confirm", confirm), ("shared-secret", shared), ("h1", h1), ("h2", h2), ("secret", secret),
            ("client-mac-key", keys["client mac"]), ("server-mac-key", keys["server mac"]),
            ("client-write-key", keys["client write"]), ("server-write-key", keys["server write"]),
            ("key-update-client-write", hkdf_expand(keys["client write"], b"pager-v1 key update", 32))] + sealed


def seal(key, counter, frame_bytes):
    """Section 5.1: the clear header with length + 16 as the associated data, nonce 0^4 || counter."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    header = frame_bytes[:4] + struct.pack(">I", len(frame_bytes) - 8 + 16)
    return header + AESGCM(key).encrypt(bytes(4) + struct.pack(">Q", counter), frame_bytes[8:], header)


def seal_records(keys, welcome_frame):
    """With `encryption`: the server's record 0 (its WELCOME) and the client's records 0 and 1
    (a PAGE_REQUEST and a PING), each under its direction's write key."""
    request = frame("PAGE_REQUEST", 1, struct.pack(">IIQQ", 1, 1, 0x200000, 0x1000))
    ping = frame("PING", 0, struct.pack(">QQ", 7, 8))
    return [("plain-server-0", welcome_frame), ("sealed-server-0", seal(keys["server write"], 0, welcome_frame)),
            ("plain-client-0", request), ("sealed-client-0", seal(keys["client write"], 0, request)),
            ("plain-client-1", ping), ("sealed-client-1", seal(keys["client write"], 1, ping))]


def handshakes():
    psk = bytes(range(0xA0, 0xC0))
    token = bytes(range(0xE0, 0xF0))
    session = 0x0123456789ABCDEF
    regions = [region(1, 12, 0, 1 << 30, "vm.ram")[0], region(2, 21, 0, 64 << 20, "/dev/hugepages/vm")[0]]
    demand = handshake(
        psk, "pager-1", hello(1, 1, 0x6C, 0x210000, 0, bytes(16), "pagerd-dest@host-b", "pager-1")[0], bytes(16),
        bytes([0x11] * 32), bytes(range(32)), bytes([0x22] * 32), bytes(range(32, 64)),
        [welcome(1, 0x6C, 0x210000, 2, session, token)[0]] + regions)
    push = handshake(
        psk, "pager-1", hello(1, 1, 0x6C, 0x210000, session, bytes(16), "pagerd-dest@host-b", "pager-1")[0], token,
        bytes([0x33] * 32), bytes(range(64, 96)), bytes([0x44] * 32), bytes(range(96, 128)),
        [welcome(1, 0x6C, 0x210000, 2, session, token)[0]] + regions)
    return [("a new session's demand connection: features authentication, resume, invalidation, huge-pages", demand),
            ("the push connection resuming that session (its token from WELCOME mixed into the keys, zeros in HELLO)", push)]


def write_handshakes(name):
    with open(os.path.join(HERE, "vectors", name), "w") as f:
        f.write(f"# Pager wire protocol v1 handshake vectors ({name}). Generated by Protocols/make_vectors.py;\n"
                "# section 5 of pager-wire-v1.md. Blocks separated by blank lines, one `name: hex` a line;\n"
                "# frames are whole (header and payload); `answer` lines are WELCOME and the REGIONs, in order.\n")
        for comment, values in handshakes():
            f.write(f"\n# {comment}\n")
            for key, value in values:
                f.write(f"{key}: {spaced(value)}\n")


def write_corpus(blocks):
    """The fuzzers' seed corpus: every frame of the vector files, one file each, raw."""
    corpus = os.path.join(HERE, "vectors", "corpus")
    os.makedirs(corpus, exist_ok=True)
    for name in os.listdir(corpus):
        os.remove(os.path.join(corpus, name))
    for kind, frames in blocks:
        for i, raw in enumerate(frames):
            with open(os.path.join(corpus, f"{kind}-{i:02d}"), "wb") as f:
                f.write(raw)


os.makedirs(os.path.join(HERE, "vectors"), exist_ok=True)
write_handshakes("handshake.txt")
write_corpus([("valid", [raw for _, raw, _ in valid()]), ("invalid", [raw for _, _, raw in invalid()]),
              ("handshake", [value for _, values in handshakes() for key, value in values
                             if key in ("hello", "auth-challenge", "auth-response", "answer", "auth-confirm")])])
write("valid.hex", [(c, "meaning: " + m, raw) for c, raw, m in valid()])
write("invalid.hex", [(c, "error: " + e, raw) for c, e, raw in invalid()])
