-- Wireshark/tshark dissector for the pager wire protocol v1 (Protocols/pager-wire-v1.md).
--
-- Install: see README.md beside this file. The checks below are the spec's §7 rules in the
-- order the reference decoder (Sources/PagerWire/Codec.swift) applies them, so a capture
-- shows the same first error a daemon would have answered with `malformed-frame`.
--
-- Layout of this file: constants; fields; a payload reader that adds fields as it reads and
-- raises the §7 error it finds; one decoder per message; per-connection state (who is the
-- client, whether records are sealed); the framing loop (TCP reassembly); registration.

local pager = Proto("pager", "Pager wire protocol v1")

---------------------------------------------------------------------------------------------
-- Constants (all from the spec)

-- §2: the absolute max payload (2 MiB + 64 KiB). A header above it is refused from the
-- header alone, so the dissector never asks TCP to buffer an oversized frame either.
local MAX_PAYLOAD = 2162688
-- §2/§4.1: the smallest max_payload a peer may announce.
local MIN_MAX_PAYLOAD = 65536
-- §1: every page offset and length is a multiple of this.
local ALIGNMENT = 4096
-- §5.1: a sealed record's payload is the ciphertext then a 16-byte AES-GCM tag.
local TAG_BYTES = 16
-- The port the project's docs, units and tests use (`pagerd` has no built-in default: --listen
-- and --connect always name one). Other ports are found by the heuristic (a HELLO).
local DEFAULT_PORT = 7070

local TYPES = {
    [0x0001] = "HELLO", [0x0002] = "WELCOME", [0x0003] = "AUTH_CHALLENGE", [0x0004] = "AUTH_RESPONSE",
    [0x0005] = "AUTH_CONFIRM", [0x0010] = "REGION", [0x0020] = "PAGE_REQUEST", [0x0021] = "PAGE_DATA",
    [0x0030] = "INVALIDATE", [0x0031] = "INVALIDATE_ACK", [0x0032] = "SWITCHED", [0x0040] = "PUSH_COMPLETE", [0x0044] = "PUSH_READ",
    [0x0041] = "COMPLETE", [0x0042] = "COMPLETE_ACK", [0x0043] = "RECEIVED", [0x0050] = "PING",
    [0x0051] = "PONG", [0x0060] = "RDMA_KEY", [0x007E] = "GOODBYE", [0x007F] = "ERROR",
}
-- §4: only these types define flags; every other type has flags = 0.
local DEFINED_FLAGS = { [0x0020] = 0x3, [0x0021] = 0x7, [0x0043] = 0x3 }
local FEATURES = { "checksums", "compression", "authentication", "resume", "rdma", "invalidation", "huge-pages", "encryption", "sparse" }
local BIT_AUTHENTICATION, BIT_ENCRYPTION = 2, 7
local CHANNELS = { [0] = "demand", [1] = "push" }
local ENCODINGS = { [0] = "raw", [1] = "zero", [2] = "compressed", [3] = "sparse" }
local ERROR_CODES = {
    [1] = "malformed-frame", [2] = "unsupported-version", [3] = "unknown-region", [4] = "out-of-range",
    [5] = "misaligned", [6] = "too-large", [7] = "authentication-failed", [8] = "io-error",
    [9] = "unexpected-message", [10] = "shutting-down", [11] = "internal-error", [12] = "timeout",
}
local PAGE_SHIFTS = { [12] = true, [21] = true, [30] = true }

---------------------------------------------------------------------------------------------
-- Fields: `pager.<field>` for the header, `pager.<message>.<field>` (spec field names) for
-- payloads, `pager.range.*` for the ranges INVALIDATE and RECEIVED share, `pager.feature.*`
-- for the feature bits of HELLO and WELCOME, `pager.sealed.*` for sealed records and
-- `pager.conn.*` for what the dissector knows of the connection (generated).

local F = {}
local function def(abbr, kind, name, base, strings, mask)
    F[abbr] = ProtoField[kind]("pager." .. abbr, name, base, strings, mask)
end
local function bytes(abbr, name) F[abbr] = ProtoField.bytes("pager." .. abbr, name) end
local function str(abbr, name) F[abbr] = ProtoField.string("pager." .. abbr, name) end
local H, D = base.HEX, base.DEC

def("type", "uint16", "Type", H, TYPES)
def("flags", "uint16", "Flags", H)
def("length", "uint32", "Length", D)
def("flags.urgent", "bool", "urgent", 16, nil, 0x1)
def("flags.prefetch", "bool", "prefetch", 16, nil, 0x2)
def("flags.push", "bool", "push", 16, nil, 0x2)
def("flags.checksums", "bool", "checksums", 16, nil, 0x4)
def("flags.more", "bool", "more", 16, nil, 0x1)
def("flags.staged", "bool", "staged", 16, nil, 0x2)
for _, name in ipairs(FEATURES) do def("feature." .. name:gsub("-", "_"), "bool", name) end

def("hello.magic", "uint32", "Magic", H)
def("hello.min_version", "uint16", "Min version", D)
def("hello.max_version", "uint16", "Max version", D)
def("hello.features", "uint64", "Features offered", H)
def("hello.max_payload", "uint32", "Max payload", D)
def("hello.channel", "uint8", "Channel", D, CHANNELS)
bytes("hello.reserved", "Reserved")
def("hello.resume_session", "uint64", "Resume session", H)
bytes("hello.resume_token", "Resume token")
str("hello.client_name", "Client name")
str("hello.key_identity", "Key identity")

def("welcome.version", "uint16", "Version", D)
bytes("welcome.reserved", "Reserved")
def("welcome.features", "uint64", "Features accepted", H)
def("welcome.max_payload", "uint32", "Max payload", D)
def("welcome.region_count", "uint32", "Region count", D)
def("welcome.session_id", "uint64", "Session id", H)
bytes("welcome.resume_token", "Resume token")

bytes("challenge.server_nonce", "Server nonce")
bytes("challenge.server_share", "Server share (X25519)")
bytes("response.client_nonce", "Client nonce")
bytes("response.client_share", "Client share (X25519)")
bytes("response.mac", "MAC")
bytes("confirm.mac", "MAC")

def("region.region_id", "uint32", "Region id", D)
def("region.page_shift", "uint8", "Page shift", D)
def("region.page_size", "uint64", "Page size", D)
def("region.flags", "uint8", "Region flags", H)
def("region.flags.live", "bool", "live", 8, nil, 0x1)
bytes("region.reserved", "Reserved")
def("region.length", "uint64", "Length", H)
str("region.name", "Name")

def("request.request_id", "uint32", "Request id", D)
def("request.region_id", "uint32", "Region id", D)
def("request.offset", "uint64", "Offset", H)
def("request.length", "uint64", "Length", H)

def("data.request_id", "uint32", "Request id", D)
def("data.region_id", "uint32", "Region id", D)
def("data.offset", "uint64", "Offset", H)
def("data.length", "uint64", "Length", H)
def("data.encoding", "uint8", "Encoding", D, ENCODINGS)
bytes("data.reserved", "Reserved")
def("data.page_map", "uint64", "Page map word", H)
def("data.checksum", "uint32", "CRC-32C", H)
bytes("data.data", "Data")
def("data.data_length", "uint32", "Data bytes", D)
def("data.data_crc32c", "uint32", "Data CRC-32C (computed)", H)

def("invalidate.sequence", "uint32", "Sequence", D)
def("invalidate.region_id", "uint32", "Region id", D)
def("invalidate.range_count", "uint32", "Range count", D)
bytes("invalidate.reserved", "Reserved")
def("invalidate_ack.sequence", "uint32", "Sequence", D)
def("invalidate_ack.region_id", "uint32", "Region id", D)
def("switched.region_id", "uint32", "Region id", D)
def("switched.last_sequence", "uint32", "Last sequence", D)
def("received.region_id", "uint32", "Region id", D)
def("received.range_count", "uint32", "Range count", D)
def("range.offset", "uint64", "Range offset", H)
def("range.length", "uint64", "Range length", H)

def("push_complete.region_id", "uint32", "Region id", D)
bytes("push_complete.reserved", "Reserved")
def("push_complete.bytes", "uint64", "Bytes", H)
def("complete.region_id", "uint32", "Region id", D, { [0xFFFFFFFF] = "all" })
bytes("complete.reserved", "Reserved")
def("complete.resident_bytes", "uint64", "Resident bytes", H)
def("complete_ack.region_id", "uint32", "Region id", D, { [0xFFFFFFFF] = "all" })
bytes("complete_ack.reserved", "Reserved")
def("ping.token", "uint64", "Token", H)
def("ping.timestamp", "uint64", "Timestamp (ns)", H)
def("pong.token", "uint64", "Token", H)
def("pong.timestamp", "uint64", "Timestamp (ns)", H)
def("push_read.region_id", "uint32", "Region id", D)
def("push_read.length", "uint32", "Length", H)
def("push_read.offset", "uint64", "Offset", H)
def("rdma_key.region_id", "uint32", "Region id", D)
def("rdma_key.rkey", "uint32", "Remote key", H)
def("rdma_key.address", "uint64", "Address", H)
def("rdma_key.length", "uint64", "Length", H)
def("error.code", "uint16", "Code", D, ERROR_CODES)
bytes("error.reserved", "Reserved")
def("error.request_id", "uint32", "Request id", D)
str("error.message", "Message")

def("sealed.length", "uint32", "Sealed length", D)
def("sealed.plaintext_length", "uint32", "Plaintext length", D)
bytes("sealed.ciphertext", "Ciphertext")
bytes("sealed.tag", "GCM tag")

str("conn.direction", "Direction")
str("conn.channel", "Channel of this connection")
str("conn.encryption", "Encryption on this connection")
def("conn.frame", "uint32", "Frame number in this connection", D)

local ef_malformed = ProtoExpert.new("pager.malformed", "Malformed pager frame", expert.group.MALFORMED, expert.severity.ERROR)
local ef_checksum = ProtoExpert.new("pager.checksum_bad", "PAGE_DATA checksum mismatch", expert.group.CHECKSUM, expert.severity.ERROR)

local fields = {}
for _, f in pairs(F) do fields[#fields + 1] = f end
pager.fields = fields
pager.experts = { ef_malformed, ef_checksum }

-- Computing a CRC-32C over every PAGE_DATA is slow in Lua, so it is opt-in (tests turn it on
-- to compare with the vectors). Checksums a frame carries are always verified.
pager.prefs.data_crc = Pref.bool("Compute data CRC-32C", false, "Add pager.data.data_crc32c for every raw PAGE_DATA")

---------------------------------------------------------------------------------------------
-- CRC-32C (Castagnoli, reflected 0x82F63B78), §4.8.

local crc_table = {}
for i = 0, 255 do
    local c = i
    for _ = 1, 8 do
        if bit32.band(c, 1) ~= 0 then c = bit32.bxor(bit32.rshift(c, 1), 0x82F63B78) else c = bit32.rshift(c, 1) end
    end
    crc_table[i] = c
end

local function crc32c(range)
    local s = range:raw()
    local c = 0xFFFFFFFF
    local band, bxor, rshift, byte = bit32.band, bit32.bxor, bit32.rshift, string.byte
    for i = 1, #s do c = bxor(crc_table[band(bxor(c, byte(s, i)), 0xFF)], rshift(c, 8)) end
    return bxor(c, 0xFFFFFFFF)
end

---------------------------------------------------------------------------------------------
-- The payload reader: each read adds its field to the tree; a violation raises a §7 error
-- ({ kind, text, range }) that the frame dissector turns into expert info.

local function fail(kind, text, range) error({ kind = kind, text = kind .. ": " .. text, range = range }, 0) end

local function hex(v)
    if type(v) == "number" then return string.format("0x%x", v) end
    local h = v:tohex():gsub("^0+", "")
    return "0x" .. (h == "" and "0" or h)
end

local Reader = {}
Reader.__index = Reader

-- Reads the payload of the whole frame `tvb` (header at 0, payload from 8).
local function reader(tvb, tree, message)
    return setmetatable({ tvb = tvb, pos = 0, len = tvb:len() - 8, tree = tree, msg = message }, Reader)
end

-- Bytes `n` at payload offset `at`; the whole payload (or the header for an empty one).
function Reader:at(at, n) return self.tvb(8 + at, n) end
function Reader:all() return self.len > 0 and self.tvb(8, self.len) or self.tvb(0, 8) end

local function leaf(abbr) return abbr:match("([^.]+)$") end

function Reader:take(n, abbr)
    if self.pos + n > self.len then
        fail("truncated-payload", string.format("%s payload is %d bytes, too short for field %s (needs %d)",
            self.msg, self.len, leaf(abbr), self.pos + n), self:all())
    end
    local r = self.tvb(8 + self.pos, n)
    self.pos = self.pos + n
    return r
end

function Reader:field(abbr, n, getter)
    local r = self:take(n, abbr)
    local item = self.tree:add(F[abbr], r)
    return r[getter](r), r, item
end
function Reader:u8(abbr) return self:field(abbr, 1, "uint") end
function Reader:u16(abbr) return self:field(abbr, 2, "uint") end
function Reader:u32(abbr) return self:field(abbr, 4, "uint") end
function Reader:u64(abbr) return self:field(abbr, 8, "uint64") end
function Reader:bytes(abbr, n) return self:field(abbr, n, "bytes") end

function Reader:reserved(abbr, n)
    local r = self:take(n, abbr)
    self.tree:add(F[abbr], r)
    local s = r:raw()
    for i = 1, n do
        if s:byte(i) ~= 0 then fail("reserved-not-zero", self.msg .. " reserved field " .. leaf(abbr) .. " is not zero", r) end
    end
end

-- §1: UTF-8 as Swift's String(validating:) accepts it (no overlongs, surrogates or > U+10FFFF).
local function valid_utf8(s)
    local i, n = 1, #s
    while i <= n do
        local c = s:byte(i)
        local len, min
        if c < 0x80 then len, min = 1, 0
        elseif c >= 0xC2 and c <= 0xDF then len, min = 2, 0x80
        elseif c >= 0xE0 and c <= 0xEF then len, min = 3, 0x800
        elseif c >= 0xF0 and c <= 0xF4 then len, min = 4, 0x10000
        else return false end
        if i + len - 1 > n then return false end
        local cp = c % (2 ^ (8 - len - (len > 1 and 1 or 0)))
        for k = 1, len - 1 do
            local b = s:byte(i + k)
            if b < 0x80 or b > 0xBF then return false end
            cp = cp * 64 + (b - 0x80)
        end
        if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return false end
        i = i + len
    end
    return true
end

function Reader:string(abbr, cap)
    local lr = self:take(2, abbr)
    local n = lr:uint()
    if n > cap then
        fail("field-out-of-range", string.format("%s field %s length is %d, must be at most %d bytes", self.msg, leaf(abbr), n, cap), lr)
    end
    if n == 0 then
        self.tree:add(F[abbr], lr, "")
        return ""
    end
    local r = self:take(n, abbr)
    local s = r:raw()
    if not valid_utf8(s) then fail("invalid-utf8", self.msg .. " field " .. leaf(abbr) .. " is not valid UTF-8", r) end
    self.tree:add(F[abbr], r, s)
    return s
end

function Reader:expect_end()
    local extra = self.len - self.pos
    if extra ~= 0 then
        fail("trailing-bytes", string.format("%s payload has %d unexpected trailing bytes", self.msg, extra), self:at(self.pos, extra))
    end
end

local function out_of_range(msg, field, value, limit, range)
    fail("field-out-of-range", string.format("%s field %s is %s, must be %s", msg, field, tostring(value), limit), range)
end

local U0 = UInt64(0)

-- §1: a page range: aligned, nonzero, not past 2^64 (the reference's checkRange, in its order).
local function check_range(msg, offset, length, prefix, range)
    if offset:lower() % ALIGNMENT ~= 0 then fail("misaligned", msg .. " field " .. prefix .. "offset " .. hex(offset) .. " is not a multiple of 4096", range) end
    if length:lower() % ALIGNMENT ~= 0 then fail("misaligned", msg .. " field " .. prefix .. "length " .. hex(length) .. " is not a multiple of 4096", range) end
    if length == U0 then out_of_range(msg, prefix .. "length", 0, "greater than 0", range) end
    if offset > UInt64.max() - length then out_of_range(msg, prefix .. "offset+length", hex(offset), "at most 2^64 - length", range) end
end

local function features(r, abbr)
    local v, range, item = r:u64(abbr)
    local names = {}
    for bit, name in ipairs(FEATURES) do
        local on = v:higher() == 0 and bit32.btest(v:lower(), bit32.lshift(1, bit - 1))
        item:add(F["feature." .. name:gsub("-", "_")], range, on)
        if on then names[#names + 1] = name end
    end
    item:append_text(" (" .. (#names > 0 and table.concat(names, "|") or "none") .. ")")
    return v
end

local function bit_set(v, bit) return v:higher() == 0 and bit32.btest(v:lower(), bit32.lshift(1, bit)) end

local function max_payload(r, abbr)
    local v, range = r:u32(abbr)
    if v < MIN_MAX_PAYLOAD then out_of_range(r.msg, "max_payload", v, "at least " .. MIN_MAX_PAYLOAD, range) end
end

-- Ranges of INVALIDATE and RECEIVED: the count must be exactly what the payload holds.
local function ranges(r, count, count_range, ascending)
    local room = (r.len - r.pos) / 16
    if count * 16 ~= r.len - r.pos then
        out_of_range(r.msg, "range_count", count, string.format("%d (the ranges in the payload)", math.floor(room)), count_range)
    end
    local last_end
    local text = {}
    for i = 0, count - 1 do
        local offset, orange = r:u64("range.offset")
        local length, lrange = r:u64("range.length")
        local prefix = "ranges[" .. i .. "]."
        check_range(r.msg, offset, length, prefix, r.tvb(orange:offset(), 16))
        if ascending and last_end ~= nil and offset <= last_end then
            out_of_range(r.msg, prefix .. "offset", hex(offset), "above " .. hex(last_end) .. ", the end of the range before (ascending, apart)", orange)
        end
        last_end = offset + length
        text[#text + 1] = hex(offset) .. "+" .. hex(length)
    end
    return "[" .. table.concat(text, ",") .. "]"
end

---------------------------------------------------------------------------------------------
-- Message decoders: each reads the payload in wire order and returns the Info text.
-- `frame` has flags and the connection's state (`conn`) for the few that record something.

local decode = {}

decode[0x0001] = function(r, frame)
    local magic, mrange = r:u32("hello.magic")
    if magic ~= 0x50475231 then
        fail("bad-magic", string.format("HELLO magic is 0x%08x, expected 0x50475231: peer does not speak pager wire protocol", magic), mrange)
    end
    local min = r:u16("hello.min_version")
    local max, vrange = r:u16("hello.max_version")
    if min == 0 or min > max then out_of_range("HELLO", "min_version", min, "between 1 and max_version " .. max, vrange) end
    local offered = features(r, "hello.features")
    max_payload(r, "hello.max_payload")
    local channel, crange = r:u8("hello.channel")
    if CHANNELS[channel] == nil then out_of_range("HELLO", "channel", channel, "0 (demand) or 1 (push)", crange) end
    r:reserved("hello.reserved", 3)
    local session = r:u64("hello.resume_session")
    if session == U0 and channel ~= 0 then out_of_range("HELLO", "channel", channel, "0 (demand) for a new session", crange) end
    r:bytes("hello.resume_token", 16)
    local name = r:string("hello.client_name", 64)
    r:string("hello.key_identity", 64)
    r:expect_end()
    frame.conn.channel = CHANNELS[channel]
    frame.conn.offers_encryption = bit_set(offered, BIT_AUTHENTICATION) and bit_set(offered, BIT_ENCRYPTION)
    return string.format("HELLO %s client=\"%s\"", CHANNELS[channel], name)
end

decode[0x0002] = function(r)
    local version, vrange = r:u16("welcome.version")
    if version == 0 then out_of_range("WELCOME", "version", 0, "at least 1", vrange) end
    r:reserved("welcome.reserved", 2)
    features(r, "welcome.features")
    max_payload(r, "welcome.max_payload")
    local count = r:u32("welcome.region_count")
    local session = r:u64("welcome.session_id")
    r:bytes("welcome.resume_token", 16)
    r:expect_end()
    return string.format("WELCOME session=%s regions=%d", hex(session), count)
end

decode[0x0003] = function(r)
    r:bytes("challenge.server_nonce", 32); r:bytes("challenge.server_share", 32); r:expect_end()
    return "AUTH_CHALLENGE"
end

decode[0x0004] = function(r)
    r:bytes("response.client_nonce", 32); r:bytes("response.client_share", 32); r:bytes("response.mac", 32); r:expect_end()
    return "AUTH_RESPONSE"
end

decode[0x0005] = function(r)
    r:bytes("confirm.mac", 32); r:expect_end()
    return "AUTH_CONFIRM"
end

decode[0x0010] = function(r)
    local id = r:u32("region.region_id")
    local shift, srange = r:u8("region.page_shift")
    if not PAGE_SHIFTS[shift] then out_of_range("REGION", "page_shift", shift, "12, 21 or 30", srange) end
    local flags, frange, fitem = r:u8("region.flags")
    fitem:add(F["region.flags.live"], frange)
    if bit32.band(flags, 0xFE) ~= 0 then fail("reserved-not-zero", "REGION reserved field flags is not zero", frange) end
    r:reserved("region.reserved", 2)
    local length, lrange = r:u64("region.length")
    local page = UInt64(1):lshift(shift)
    r.tree:add(F["region.page_size"], srange, page):set_generated()
    if length == U0 or length % page ~= U0 then
        out_of_range("REGION", "length", tostring(length), "a nonzero multiple of the page size " .. tostring(page), lrange)
    end
    local name = r:string("region.name", 255)
    r:expect_end()
    return string.format("REGION id=%d length=%s \"%s\"", id, hex(length), name)
end

decode[0x0020] = function(r, frame)
    local id = r:u32("request.request_id")
    local region = r:u32("request.region_id")
    local offset = r:u64("request.offset")
    local length = r:u64("request.length")
    check_range("PAGE_REQUEST", offset, length, "", r:all())
    if frame.flags == 0x3 then out_of_range("PAGE_REQUEST", "flags", 3, "urgent or prefetch, not both", frame.flags_range) end
    r:expect_end()
    return string.format("PAGE_REQUEST id=%d region=%d offset=%s length=%s", id, region, hex(offset), hex(length))
end

-- §4.8 and the reference's PageDataHeader.decode then payloadLayout.
decode[0x0021] = function(r, frame)
    local id = r:u32("data.request_id")
    local region = r:u32("data.region_id")
    local offset = r:u64("data.offset")
    local length = r:u64("data.length")
    local encoding, erange = r:u8("data.encoding")
    r:reserved("data.reserved", 7)
    if ENCODINGS[encoding] == nil then out_of_range("PAGE_DATA", "encoding", encoding, "0 (raw), 1 (zero), 2 (compressed) or 3 (sparse)", erange) end
    check_range("PAGE_DATA", offset, length, "", r:at(0, 32))
    local urgent, push, sums = bit32.btest(frame.flags, 1), bit32.btest(frame.flags, 2), bit32.btest(frame.flags, 4)
    if urgent and push then out_of_range("PAGE_DATA", "flags", frame.flags, "urgent or push, not both", frame.flags_range) end
    if sums and encoding == 1 then out_of_range("PAGE_DATA", "flags", frame.flags, "without checksums for the zero encoding", frame.flags_range) end
    -- Sparse: the page map (one bit per 4 KiB page) comes first; checksums and data cover
    -- only its data pages.
    local data_pages = nil
    if encoding == 3 then
        local pages = length / UInt64(ALIGNMENT)
        local words = (pages + UInt64(63)) / UInt64(64)
        if UInt64(32) + words * UInt64(8) > UInt64(r.len) then
            fail("truncated-payload", string.format("PAGE_DATA payload is %d bytes, too short for field page_map (needs %s)",
                r.len, tostring(UInt64(32) + words * UInt64(8))), r:all())
        end
        words = words:tonumber()
        local extra = (pages % UInt64(64)):tonumber()
        data_pages = 0
        local any = false
        for i = 1, words do
            local w, wrange = r:u64("data.page_map")
            if i == words and extra ~= 0 and w:rshift(extra) ~= U0 then
                out_of_range("PAGE_DATA", "page_map", w, string.format("no bit past page %d of the range", pages:tonumber() - 1), wrange)
            end
            if w ~= U0 then any = true end
            for b = 0, 63 do if w:rshift(b):band(UInt64(1)) ~= U0 then data_pages = data_pages + 1 end end
        end
        if not any then
            out_of_range("PAGE_DATA", "page_map", 0, "at least one data page (an all-zero range is the zero encoding)", r:all())
        end
    end
    local rest = r.len - r.pos
    -- n = length / 4096 may be huge for a bad frame: compare in 64 bits before using it.
    local count = sums and (data_pages and UInt64(data_pages) or length / UInt64(ALIGNMENT)) or U0
    if count * UInt64(4) > UInt64(rest) then
        fail("truncated-payload", string.format("PAGE_DATA payload is %d bytes, too short for field checksums (needs %s)",
            r.len, tostring(UInt64(32) + count * UInt64(4))), r:all())
    end
    count = count:tonumber()
    local remaining = rest - 4 * count
    if encoding == 0 and UInt64(remaining) ~= length then
        out_of_range("PAGE_DATA", "data length", remaining, "equal to length " .. tostring(length), r:all())
    elseif encoding == 1 and remaining ~= 0 then
        fail("trailing-bytes", string.format("PAGE_DATA payload has %d unexpected trailing bytes", remaining), r:at(r.pos, remaining))
    elseif encoding == 3 and remaining ~= data_pages * ALIGNMENT then
        out_of_range("PAGE_DATA", "data length", remaining, string.format("equal to the map's %d data pages (%d bytes)", data_pages, data_pages * ALIGNMENT), r:all())
    elseif encoding == 2 and remaining == 0 then
        fail("truncated-payload", string.format("PAGE_DATA payload is %d bytes, too short for field compressed data (needs %d)", r.len, r.len + 1), r:all())
    end
    local sums_at = r.pos
    local items = {}
    for i = 1, count do items[i] = { r:u32("data.checksum") } end
    if remaining > 0 then
        local data = r:take(remaining, "data.data")
        local item = r.tree:add(F["data.data"], data)
        r.tree:add(F["data.data_length"], data, remaining):set_generated()
        if pager.prefs.data_crc then r.tree:add(F["data.data_crc32c"], data, crc32c(data)):set_generated() end
        for i = 1, count do
            local got = crc32c(data:tvb()(ALIGNMENT * (i - 1), ALIGNMENT))
            if got ~= items[i][1] then
                items[i][3]:add_proto_expert_info(ef_checksum, string.format("checksum of 4 KiB page %d is 0x%08x, frame says 0x%08x", i - 1, got, items[i][1]))
            end
        end
    end
    r:expect_end()
    local flags = {}
    if urgent then flags[#flags + 1] = "urgent" end
    if push then flags[#flags + 1] = "push" end
    return string.format("PAGE_DATA%s id=%d region=%d offset=%s length=%s %s",
        #flags > 0 and (" " .. table.concat(flags, "|")) or "", id, region, hex(offset), hex(length), ENCODINGS[encoding])
end

decode[0x0030] = function(r)
    local seq = r:u32("invalidate.sequence")
    local region = r:u32("invalidate.region_id")
    local count, crange = r:u32("invalidate.range_count")
    r:reserved("invalidate.reserved", 4)
    if count == 0 then out_of_range("INVALIDATE", "range_count", 0, "at least 1", crange) end
    local list = ranges(r, count, crange, false)
    return string.format("INVALIDATE sequence=%d region=%d ranges=%s", seq, region, list)
end

decode[0x0031] = function(r)
    local seq = r:u32("invalidate_ack.sequence"); local region = r:u32("invalidate_ack.region_id"); r:expect_end()
    return string.format("INVALIDATE_ACK sequence=%d region=%d", seq, region)
end

decode[0x0032] = function(r)
    local region = r:u32("switched.region_id"); local last = r:u32("switched.last_sequence"); r:expect_end()
    return string.format("SWITCHED region=%d last-sequence=%d", region, last)
end

decode[0x0043] = function(r, frame)
    local region = r:u32("received.region_id")
    local count, crange = r:u32("received.range_count")
    local list = ranges(r, count, crange, true)
    return string.format("RECEIVED%s%s region=%d ranges=%s", bit32.btest(frame.flags, 1) and " more" or "",
        bit32.btest(frame.flags, 2) and " staged" or "", region, list)
end

decode[0x0040] = function(r)
    local region = r:u32("push_complete.region_id"); r:reserved("push_complete.reserved", 4)
    local n = r:u64("push_complete.bytes"); r:expect_end()
    return string.format("PUSH_COMPLETE region=%d bytes=%s", region, hex(n))
end

decode[0x0041] = function(r)
    local region = r:u32("complete.region_id"); r:reserved("complete.reserved", 4)
    local n = r:u64("complete.resident_bytes"); r:expect_end()
    return string.format("COMPLETE region=%s resident-bytes=%s", region == 0xFFFFFFFF and "all" or region, hex(n))
end

decode[0x0042] = function(r)
    local region = r:u32("complete_ack.region_id"); r:reserved("complete_ack.reserved", 4); r:expect_end()
    return string.format("COMPLETE_ACK region=%s", region == 0xFFFFFFFF and "all" or region)
end

local function ping(name, prefix)
    return function(r)
        local token = r:u64(prefix .. ".token"); r:u64(prefix .. ".timestamp"); r:expect_end()
        return name .. " token=" .. hex(token)
    end
end
decode[0x0050] = ping("PING", "ping")
decode[0x0051] = ping("PONG", "pong")

decode[0x0044] = function(r)
    local region = r:u32("push_read.region_id")
    local length, lrange = r:u32("push_read.length")
    local offset = r:u64("push_read.offset")
    r:expect_end()
    check_range("PUSH_READ", offset, UInt64(length), "", r:all())
    if length > 2097152 then out_of_range("PUSH_READ", "length", length, "at most 2097152", lrange) end
    return string.format("PUSH_READ region=%d offset=%s length=%s", region, hex(offset), hex(UInt64(length)))
end

decode[0x0060] = function(r)
    local region = r:u32("rdma_key.region_id"); r:u32("rdma_key.rkey"); r:u64("rdma_key.address")
    local length, lrange = r:u64("rdma_key.length")
    if length == U0 then out_of_range("RDMA_KEY", "length", 0, "greater than 0", lrange) end
    r:expect_end()
    return string.format("RDMA_KEY region=%d length=%s", region, hex(length))
end

decode[0x007E] = function(r) r:expect_end(); return "GOODBYE" end

decode[0x007F] = function(r)
    local code = r:u16("error.code"); r:reserved("error.reserved", 2)
    local id = r:u32("error.request_id")
    local text = r:string("error.message", 1024)
    r:expect_end()
    return string.format("ERROR %s request=%d \"%s\"", ERROR_CODES[code] or tostring(code), id, text)
end

---------------------------------------------------------------------------------------------
-- Per-connection state. Wireshark may dissect a frame many times and in any order, so what
-- depends on earlier frames is decided the first time a frame is seen (in capture order)
-- and kept per (frame, offset).
--
-- Sealing (§5.1): WELCOME is itself sealed, so the accepted features are never visible. The
-- spec makes them predictable: a server that authenticates a HELLO offering `encryption`
-- accepts it. So after AUTH_RESPONSE on such a connection every client frame is sealed, and
-- every server frame is too, except a refusal: an ERROR in the clear as the server's first
-- frame after AUTH_RESPONSE.

local conns = {}   -- "addr:port addr:port" -> { client = "addr:port", frames, channel, offers_encryption, client_sealed, server }
local seen = {}    -- "frame:offset" -> { sealed, index, from_client }

function pager.init()
    conns = {}
    seen = {}
end

local function endpoint(addr, port) return tostring(addr) .. ":" .. tostring(port) end

local function conn_of(pinfo)
    -- By address and port pair, the same both ways (tcp.stream is not always extracted: tshark -2
    -- leaves it out of its second pass).
    local a, b = endpoint(pinfo.src, pinfo.src_port), endpoint(pinfo.dst, pinfo.dst_port)
    local key = a < b and (a .. " " .. b) or (b .. " " .. a)
    local c = conns[key]
    if c == nil then
        c = { frames = 0, server = "clear" }
        conns[key] = c
    end
    return c
end

-- Decides, on the first pass, whether the frame at `offset` is sealed and who sent it.
local function classify(pinfo, offset, ftype, c)
    local key = pinfo.number .. ":" .. offset
    local s = seen[key]
    if s ~= nil then return s end
    if c.client == nil and ftype == 0x0001 then c.client = endpoint(pinfo.src, pinfo.src_port) end
    local from_client = c.client == endpoint(pinfo.src, pinfo.src_port)
    local sealed
    if from_client then
        sealed = c.client_sealed == true
    elseif c.server == "pending" then
        -- The first server frame after AUTH_RESPONSE: a clear ERROR refuses, anything else is sealed.
        sealed = ftype ~= 0x007F
        c.server = sealed and "sealed" or "clear"
    else
        sealed = c.server == "sealed"
    end
    c.frames = c.frames + 1
    s = { sealed = sealed, index = c.frames, from_client = from_client, fresh = true }
    seen[key] = s
    return s
end

-- After the frame is decoded: AUTH_RESPONSE turns sealing on, the first time the frame is
-- seen. Not keyed on pinfo.visited: tshark -2 runs init() between its passes, and the second
-- pass must rebuild the same state from the frames in order.
local function advance(c, ftype, s, valid)
    if not s.fresh then return end
    s.fresh = false
    if s.sealed or not valid then return end
    if ftype == 0x0004 and s.from_client and c.offers_encryption then
        c.client_sealed = true
        c.server = "pending"
    end
end

local function encryption_text(c, s)
    if s.sealed then return "sealed record" end
    if c.offers_encryption then return "offered" end
    return "not offered"
end

---------------------------------------------------------------------------------------------
-- One frame (header and payload, whole).

local function dissect_sealed(tvb, tree, name, length)
    local item = tree:add(F["sealed.length"], tvb(4, 4))
    if length < TAG_BYTES then
        item:add_proto_expert_info(ef_malformed, string.format("truncated-payload: sealed %s record is %d bytes, shorter than its %d-byte tag", name, length, TAG_BYTES))
        return string.format("sealed record %s (%d bytes, malformed)", name, length)
    end
    tree:add(F["sealed.plaintext_length"], tvb(4, 4), length - TAG_BYTES):set_generated()
    if length > TAG_BYTES then tree:add(F["sealed.ciphertext"], tvb(8, length - TAG_BYTES)) end
    tree:add(F["sealed.tag"], tvb(8 + length - TAG_BYTES, TAG_BYTES))
    return string.format("sealed record %s, %d bytes", name, length)
end

local function dissect_frame_fields(tvb, sub, s, c)
    local ftype, flags, length = tvb(0, 2):uint(), tvb(2, 2):uint(), tvb(4, 4):uint()
    local name = TYPES[ftype] or string.format("0x%04x", ftype)
    sub:add(F["type"], tvb(0, 2))
    local fitem = sub:add(F["flags"], tvb(2, 2))
    sub:add(F["length"], tvb(4, 4))
    if ftype == 0x0020 then fitem:add(F["flags.urgent"], tvb(2, 2)); fitem:add(F["flags.prefetch"], tvb(2, 2))
    elseif ftype == 0x0021 then fitem:add(F["flags.urgent"], tvb(2, 2)); fitem:add(F["flags.push"], tvb(2, 2)); fitem:add(F["flags.checksums"], tvb(2, 2))
    elseif ftype == 0x0043 then fitem:add(F["flags.more"], tvb(2, 2)); fitem:add(F["flags.staged"], tvb(2, 2)) end

    local function malformed(kind, text, range)
        (range and sub:add(range, "") or sub):add_proto_expert_info(ef_malformed, kind .. ": " .. text)
        return name .. " [malformed: " .. kind .. "]"
    end
    -- §2: the header is checked alone, before the payload (sealed or not).
    if TYPES[ftype] == nil then
        if length > 0 then sub:add(tvb(8, length), "Payload") end
        return malformed("unknown-message-type", string.format("unknown message type 0x%x", ftype)), false
    end
    local undefined = bit32.band(flags, bit32.bnot(DEFINED_FLAGS[ftype] or 0))
    if undefined ~= 0 then
        return malformed("unknown-flags", string.format("%s has undefined flag bits 0x%x", name, undefined)), false
    end
    if s.sealed then return dissect_sealed(tvb, sub, name, length), true end

    local r = reader(tvb, sub, name)
    local frame = { flags = flags, flags_range = tvb(2, 2), conn = c }
    local ok, result = pcall(decode[ftype], r, frame)
    if ok then return result, true end
    if type(result) ~= "table" then error(result, 0) end
    local item = result.range and sub:add(result.range, "Malformed here") or sub
    item:add_proto_expert_info(ef_malformed, result.text)
    return name .. " [malformed: " .. result.kind .. "]", false
end

-- The frame's tree, then what is known of its connection (after the payload: a HELLO is
-- itself what says whether encryption is offered).
local function dissect_frame(tvb, pinfo, tree, offset, c)
    local ftype = tvb(0, 2):uint()
    local name = TYPES[ftype] or string.format("0x%04x", ftype)
    local s = classify(pinfo, offset, ftype, c)
    local sub = tree:add(pager, tvb(), s.sealed and ("Pager sealed record, " .. name) or ("Pager " .. name))
    local info, valid = dissect_frame_fields(tvb, sub, s, c)
    sub:add(F["conn.direction"], s.from_client and "destination to source" or "source to destination"):set_generated()
    sub:add(F["conn.channel"], c.channel or "unknown"):set_generated()
    sub:add(F["conn.encryption"], encryption_text(c, s)):set_generated()
    sub:add(F["conn.frame"], s.index):set_generated()
    return info, valid
end

---------------------------------------------------------------------------------------------
-- Framing over TCP: several frames per segment, frames across segments (reassembled).

local function add_info(pinfo, text)
    if pinfo.private.pager_info == "1" then pinfo.cols.info:append(", " .. text) else pinfo.cols.info:set(text) end
    pinfo.private.pager_info = "1"
end

function pager.dissector(tvb, pinfo, tree)
    local total, offset = tvb:len(), 0
    pinfo.cols.protocol = "PAGER"
    local c = conn_of(pinfo)
    while offset < total do
        local left = total - offset
        if left < 8 then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = DESEGMENT_ONE_MORE_SEGMENT
            return total
        end
        local ftype, length = tvb(offset, 2):uint(), tvb(offset + 4, 4):uint()
        local s = seen[pinfo.number .. ":" .. offset]
        local sealed = s and s.sealed or (s == nil and (c.client_sealed or c.server == "sealed"))
        local limit = MAX_PAYLOAD + ((sealed and TYPES[ftype]) and TAG_BYTES or 0)
        if length > limit then
            -- §2 frame-too-large: refused from the header; the connection ends there, so the
            -- rest of the capture's bytes on it are not frames.
            local sub = tree:add(pager, tvb(offset), "Pager " .. (TYPES[ftype] or "frame") .. " (frame too large)")
            sub:add(F["type"], tvb(offset, 2)); sub:add(F["flags"], tvb(offset + 2, 2))
            local item = sub:add(F["length"], tvb(offset + 4, 4))
            item:add_proto_expert_info(ef_malformed, string.format("frame-too-large: %s frame announces %d payload bytes, limit is %d",
                TYPES[ftype] or string.format("type 0x%x", ftype), length - (limit - MAX_PAYLOAD), MAX_PAYLOAD))
            add_info(pinfo, (TYPES[ftype] or "frame") .. " [malformed: frame-too-large]")
            return total
        end
        if left < 8 + length then
            pinfo.desegment_offset = offset
            pinfo.desegment_len = 8 + length - left
            return total
        end
        local info, valid = dissect_frame(tvb(offset, 8 + length):tvb(), pinfo, tree, offset, c)
        advance(c, ftype, seen[pinfo.number .. ":" .. offset], valid)
        add_info(pinfo, info)
        offset = offset + 8 + length
    end
    return total
end

-- A connection is ours if it starts with a HELLO: type 0x0001, flags 0, magic "PGR1".
local function heuristic(tvb, pinfo, tree)
    if tvb:len() < 12 then return false end
    if tvb(0, 2):uint() ~= 0x0001 or tvb(2, 2):uint() ~= 0 or tvb(8, 4):uint() ~= 0x50475231 then return false end
    pinfo.conversation = pager
    pager.dissector(tvb, pinfo, tree)
    return true
end

DissectorTable.get("tcp.port"):add(DEFAULT_PORT, pager)
pager:register_heuristic("tcp", heuristic)
