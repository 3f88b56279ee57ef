import PagerCrypto
import PagerTrust
import PagerWire

// One direction of a connection's record protection (feature `encryption`,
// Protocols/pager-wire-v1.md §5.1): AES-256-GCM under the direction's write key, the frame
// header as associated data, the nonce 4 zero bytes then a 64-bit record counter, and an
// implicit key update long before a key could be used too much. Both ends count the same
// records and bytes, so they switch keys at the same record without a message.

/// How much one key may protect before both sides move to the next one.
public struct RecordLimits: Sendable, Equatable {
    /// Records under one key: 2^24, as TLS 1.3 bounds AES-GCM (RFC 8446 §5.5 allows
    /// 2^24.5 full records): far from the 2^64 counter, and from GCM's forgery bounds.
    public var records: UInt64
    /// Plaintext bytes under one key: 2^36 (64 GiB), so that records of up to 2 MiB cannot
    /// push a key past what 2^24 records of TLS's 16 KiB size would protect.
    public var bytes: UInt64

    public static let standard = RecordLimits(records: 1 << 24, bytes: 1 << 36)

    public init(records: UInt64, bytes: UInt64) {
        self.records = records
        self.bytes = bytes
    }
}

/// The counter and key of one direction: the next record's nonce, and when to update the key.
struct RecordCounter {
    private(set) var key: [UInt8]
    private(set) var counter: UInt64 = 0
    private var bytes: UInt64 = 0
    /// Keys used so far, the first included (for tests and the summary).
    private(set) var generation = 1
    let limits: RecordLimits

    init(key: [UInt8], limits: RecordLimits) {
        self.key = key
        self.limits = limits
    }

    /// The counter of the next record of `plaintextBytes`, after the key update it needs
    /// (true when the key changed: the caller rekeys its context first).
    mutating func next(plaintextBytes: Int) -> (counter: UInt64, rekeyed: Bool) {
        var rekeyed = false
        if counter >= limits.records || bytes + UInt64(plaintextBytes) > limits.bytes {
            // `old` holds the only reference to the used key's storage once `key` is replaced,
            // so the wipe clears those bytes (a copy of it would be wiped after copy-on-write).
            var old = key
            key = HandshakeKeys.updated(old)
            wipe(&old)
            counter = 0
            bytes = 0
            generation += 1
            rekeyed = true
        }
        defer {
            counter += 1
            bytes += UInt64(plaintextBytes)
        }
        return (counter, rekeyed)
    }
}

/// The sending direction: seals a frame whose plaintext is given in parts into one buffer,
/// ready for one `sendmsg`. Used under the connection's send lock (counter order is wire order).
final class RecordSealer: @unchecked Sendable {
    private var counter: RecordCounter
    private let sealer: AESGCMSealer
    /// Header, ciphertext and tag of the largest frame: allocated once per connection.
    private let buffer: UnsafeMutableRawPointer
    static let bufferSize = FrameHeader.size + Int(WireLimits.absoluteMaxPayload) + AESGCMSealer.tagByteCount

    init(key: [UInt8], limits: RecordLimits) throws(CryptoError) {
        counter = RecordCounter(key: key, limits: limits)
        sealer = try AESGCMSealer(key: key)
        buffer = .allocate(byteCount: Self.bufferSize, alignment: 64)
    }

    deinit { buffer.deallocate() }

    var generation: Int { counter.generation }

    /// The sealed frame for `parts`, whose first part begins with the plain 8-byte header
    /// (its length field the plaintext payload's): the header with the sealed length (as
    /// the associated data), the encrypted payload, the tag. Valid until the next call.
    func seal(_ parts: [UnsafeRawBufferPointer]) throws(CryptoError) -> UnsafeRawBufferPointer {
        let total = parts.reduce(0) { $0 + $1.count }
        let plaintext = total - FrameHeader.size
        precondition(parts[0].count >= FrameHeader.size && plaintext + AESGCMSealer.tagByteCount + FrameHeader.size <= Self.bufferSize)
        buffer.copyMemory(from: parts[0].baseAddress!, byteCount: FrameHeader.size)
        buffer.storeBytes(of: UInt32(plaintext + AESGCMSealer.tagByteCount).bigEndian, toByteOffset: 4, as: UInt32.self)
        var body = parts
        body[0] = UnsafeRawBufferPointer(rebasing: parts[0][FrameHeader.size...])
        let (n, rekeyed) = counter.next(plaintextBytes: plaintext)
        if rekeyed { try sealer.rekey(counter.key) }
        try sealer.seal(counter: n, aad: UnsafeRawBufferPointer(start: buffer, count: FrameHeader.size), parts: body,
                        into: buffer + FrameHeader.size, tag: buffer + FrameHeader.size + plaintext)
        return UnsafeRawBufferPointer(start: buffer, count: FrameHeader.size + plaintext + AESGCMSealer.tagByteCount)
    }
}

/// The receiving direction: opens a sealed payload in place.
final class RecordOpener: @unchecked Sendable {
    private var counter: RecordCounter
    private let opener: AESGCMOpener
    /// The peer may send one clear ERROR as its first frame (a refusal before it could seal).
    var clearErrorAllowed: Bool

    init(key: [UInt8], limits: RecordLimits, clearErrorFirst: Bool) throws(CryptoError) {
        counter = RecordCounter(key: key, limits: limits)
        opener = try AESGCMOpener(key: key)
        clearErrorAllowed = clearErrorFirst
    }

    var generation: Int { counter.generation }
    /// The number of the next record (under the current key).
    var nextRecord: UInt64 { counter.counter }

    /// Opens `sealed` (payload and tag) in place under `header` (the sealed frame's, as sent);
    /// false if the tag does not verify (the record was changed, dropped, repeated, reordered
    /// or moved: its counter or header differs from what was sealed).
    func open(header: UnsafeRawBufferPointer, sealed: UnsafeMutableRawBufferPointer) -> Bool {
        let plaintext = sealed.count - AESGCMSealer.tagByteCount
        let (n, rekeyed) = counter.next(plaintextBytes: plaintext)
        if rekeyed {
            do { try opener.rekey(counter.key) } catch { preconditionFailure("AES-GCM rekey failed: \(error)") }
        }
        do {
            try opener.open(counter: n, aad: header, inPlace: UnsafeMutableRawBufferPointer(rebasing: sealed[..<plaintext]),
                            tag: UnsafeRawBufferPointer(rebasing: sealed[plaintext...]))
            return true
        } catch {
            return false
        }
    }
}
