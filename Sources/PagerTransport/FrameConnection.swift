import PagerWire

/// One connection that carries pager wire frames: what the source and the destination need
/// of a transport. ``FrameChannel`` is the TCP implementation; another transport (RDMA) is
/// another conforming type.
///
/// Any number of threads may send: each frame reaches the peer whole, never interleaved with
/// another. One thread receives.
public protocol FrameConnection: AnyObject, Sendable {
    /// The peer, for messages (`a.b.c.d:port` over TCP).
    var peer: String { get }
    /// Largest payload the peer accepts from us (its HELLO or WELCOME `max_payload`).
    var sendLimit: UInt32 { get set }
    /// Largest payload we accept: a frame announcing more is refused from its header.
    var receiveLimit: UInt32 { get set }
    /// Verify the CRC-32C of incoming pages when the peer sends checksums.
    var verifyChecksums: Bool { get set }

    /// Sends one message as one frame.
    func send(_ message: Message) throws(ChannelError)
    /// Sends PAGE_DATA whose bytes are the `segments` in order (raw: `length` bytes; sparse:
    /// the map's data pages; zero: none), with `checksums` (one CRC-32C per 4 KiB carried) if
    /// given, without copying the page bytes.
    func sendPageData(_ header: PageDataHeader, checksums: [UInt32]?, segments: [UnsafeRawBufferPointer]) throws(ChannelError)
    /// Blocks until one whole frame has arrived and returns it.
    func receive() throws(ChannelError) -> Incoming
    /// Whether more input is already here (bytes buffered, or the connection readable): the
    /// next ``receive()`` will likely not wait. A hint; false when it cannot tell.
    func inputPending() -> Bool
    /// Ends the connection in both directions, waking a thread blocked in ``receive()``.
    func shutdown()
}
