import Glibc
import PagerKernel
import Testing

@Suite("ServiceNotifier (sd_notify)")
struct ServiceNotifierTests {
    @Test("datagrams reach an abstract-namespace socket, one field per line, newlines in values folded")
    func abstractSocket() throws {
        let name = "@pager-notify-test-\(getpid())"
        let socket = try UnixSocket.bindDatagram(path: name)
        defer { try? socket.close() }
        let notifier = ServiceNotifier(socketPath: name)
        notifier.ready(status: "two\nlines")
        #expect(try UnixSocket.waitReadable(socket, timeoutMilliseconds: 5000))
        let got = String(decoding: try UnixSocket.receive(socket, maxBytes: 512, maxDescriptors: 0).bytes, as: UTF8.self)
        #expect(got == "READY=1\nSTATUS=two lines")
        notifier.stopping(status: "bye")
        #expect(String(decoding: try UnixSocket.receive(socket, maxBytes: 512, maxDescriptors: 0).bytes, as: UTF8.self) == "STOPPING=1\nSTATUS=bye")
    }

    @Test("without $NOTIFY_SOCKET nothing is sent and nothing fails")
    func absent() {
        let notifier = ServiceNotifier(socketPath: nil)
        #expect(notifier.socketPath == nil)
        notifier.status("ignored")
        #expect(ServiceNotifier(socketPath: "").socketPath == nil)
    }
}
