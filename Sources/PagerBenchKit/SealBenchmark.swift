import PagerCrypto
import PagerKernel

/// The encryption floor on this CPU: libcrypto's AES-256-GCM sealing and opening records in
/// memory, one thread, the contexts reused as the connections reuse them. An encrypted
/// migration cannot beat the plain one by less than this work on each side.
public enum SealBenchmark {
    public struct Result: Sendable {
        /// Seconds to seal, then to open, `bytes` in records of `recordBytes`.
        public var sealSeconds: Double
        public var openSeconds: Double
        public var bytes: Int
        public var recordBytes: Int
    }

    /// Seals `bytes` of patterned data record by record into a second buffer, then opens them
    /// all in place and checks the plaintext came back (a benchmark of a broken cipher is no
    /// floor).
    public static func run(bytes: Int, recordBytes: Int) throws -> Result {
        precondition(bytes % recordBytes == 0 && recordBytes > 0)
        let key = (0..<32).map { UInt8($0 &* 7 &+ 1) }
        let sealer = try AESGCMSealer(key: key)
        let opener = try AESGCMOpener(key: key)
        let records = bytes / recordBytes
        let plain = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
        let sealed = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes, alignment: 4096)
        let tags = UnsafeMutableRawBufferPointer.allocate(byteCount: records * AESGCMSealer.tagByteCount, alignment: 16)
        defer { plain.deallocate(); sealed.deallocate(); tags.deallocate() }
        for i in 0..<bytes / 8 { plain.storeBytes(of: UInt64(i) &* 0x9E37_79B9_7F4A_7C15, toByteOffset: i * 8, as: UInt64.self) }
        // Touch the output so that page faults are not counted as cipher time.
        sealed.initializeMemory(as: UInt8.self, repeating: 0)
        var header = [UInt8](repeating: 0x21, count: 8)

        let t0 = monotonicNanoseconds()
        for r in 0..<records {
            let part = UnsafeRawBufferPointer(rebasing: plain[r * recordBytes ..< (r + 1) * recordBytes])
            try header.withUnsafeBytes { aad in
                try sealer.seal(counter: UInt64(r), aad: aad, parts: [part], into: sealed.baseAddress! + r * recordBytes,
                                tag: tags.baseAddress! + r * AESGCMSealer.tagByteCount)
            }
        }
        let t1 = monotonicNanoseconds()
        for r in 0..<records {
            let record = UnsafeMutableRawBufferPointer(rebasing: sealed[r * recordBytes ..< (r + 1) * recordBytes])
            let tag = UnsafeRawBufferPointer(rebasing: tags[r * AESGCMSealer.tagByteCount ..< (r + 1) * AESGCMSealer.tagByteCount])
            do {
                try header.withUnsafeMutableBytes { aad in
                    try opener.open(counter: UInt64(r), aad: UnsafeRawBufferPointer(aad), inPlace: record, tag: tag)
                }
            } catch {
                throw BenchmarkError.contentMismatch("AES-256-GCM benchmark: record \(r) did not open")
            }
        }
        let t2 = monotonicNanoseconds()
        let words = bytes / 8
        let same = (0..<words).allSatisfy {
            plain.load(fromByteOffset: $0 * 8, as: UInt64.self) == sealed.load(fromByteOffset: $0 * 8, as: UInt64.self)
        }
        guard same else {
            throw BenchmarkError.contentMismatch("AES-256-GCM benchmark: opened records differ from the sealed data")
        }
        return Result(sealSeconds: Double(t1 - t0) / 1e9, openSeconds: Double(t2 - t1) / 1e9, bytes: bytes, recordBytes: recordBytes)
    }
}
