import Logging
import PagerDestination
import PagerHarness
import PagerKernel
import PagerSource
import PagerTransport
import PagerTrust
import PagerWire
import Testing

@Suite("Stopping a server")
struct StopTests {
    @Test("once stop() and run() have returned, no server thread touches a region: its memory may be unmapped at once")
    func noThreadOutlivesRun() throws {
        var logger = Logger(label: "test")
        logger.logLevel = .critical
        for _ in 0..<5 {
            let pages = 8192 // 32 MiB: the push is still streaming when the server stops
            let served = try MemoryMapping.anonymous(length: pages * basePageSize)
            for p in 0..<pages { served.page(p).storeBytes(of: UInt64(p) + 1, as: UInt64.self) }
            let region = ServedRegion(id: 1, name: "r", base: served.base, length: pages * basePageSize)
            let server = try SourceServer(listen: Endpoint(host: "127.0.0.1", port: 0), regions: [region], authentication: TestKeys.authentication, logger: logger)
            let serverThread = try KernelThread(name: "test-server") { server.run() }
            let client = try DestinationClient(source: server.listener.endpoint, clientName: "test", authentication: TestKeys.authentication)
            // A connection still in its handshake when the server stops belongs to no session.
            let silent = try TCPSocket.connect(server.listener.endpoint)
            guard case .pageData = try client.push.receive() else {
                Issue.record("the push sent no page")
                return
            }
            server.stop()
            serverThread.join()
            // Unmapped here: a push thread still running would fault on it (SIGSEGV).
            _ = consume served
            #expect(server.activeSessions == 0)
            client.close()
            silent.shutdown()
        }
    }
}
