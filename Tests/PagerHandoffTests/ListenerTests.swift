import PagerDestination
import PagerKernel
import SystemPackage
import Testing

/// The socket side: `HandoffListener.read` on a real socketpair, with a real SCM_RIGHTS
/// descriptor (any descriptor stands in for the userfaultfd: adopting it only sets O_NONBLOCK).
@Suite("HandoffListener.read")
struct ListenerTests {
    @Test("mappings split across two sends, the descriptor on the first")
    func split() throws {
        let (workload, pager) = try UnixSocket.pair()
        defer { try? workload.close(); try? pager.close() }
        let (stand, other) = try UnixSocket.pair()
        defer { try? other.close() }
        let message = Array(#"[{"base_host_virt_addr":4096,"size":8192,"offset":0,"page_size":4096}]"#.utf8)
        try UnixSocket.send(workload, bytes: Array(message[..<20]), descriptors: [stand])
        try stand.close()
        try UnixSocket.send(workload, bytes: Array(message[20...]), descriptors: [])
        let handoff = try HandoffListener.read(from: pager)
        #expect(handoff.mappings == [RegionMapping(base: 4096, size: 8192, regionOffset: 0, pageSize: 4096)])
    }

    @Test("the preload library's {\"error\": ...} with no descriptor reaches the operator in its words")
    func workloadError() throws {
        let (workload, pager) = try UnixSocket.pair()
        defer { try? workload.close(); try? pager.close() }
        let text = "UFFDIO_API with WP_ASYNC: Invalid argument (the kernel needs 6.7 or later)"
        try UnixSocket.send(workload, bytes: Array("{\"error\":\"\(text)\"}".utf8), descriptors: [])
        // Before, the descriptor count was checked first: "got 0", and the reason was lost.
        #expect(throws: HandoffFormatError.workloadReported(text)) { try HandoffListener.read(from: pager) }
    }

    @Test("a valid message without a descriptor is still refused")
    func noDescriptor() throws {
        let (workload, pager) = try UnixSocket.pair()
        defer { try? workload.close(); try? pager.close() }
        try UnixSocket.send(workload, bytes: Array(#"[{"base_host_virt_addr":4096,"size":4096,"offset":0,"page_size":4096}]"#.utf8), descriptors: [])
        let error = #expect(throws: HandoffError.self) { try HandoffListener.read(from: pager) }
        #expect(error?.description.contains("exactly one userfaultfd") == true)
    }

    @Test("a connection that closes before sending anything (a second daemon probing the socket) does not end the wait: the next connection's handoff is read")
    func probeThenHandoff() throws {
        let path = "/tmp/pager-listener-probe-\(processID()).sock"
        defer { removeFile(path) }
        let listener = try HandoffListener(path: path)
        let probe = try UnixSocket.connect(path: path)
        try probe.close()
        let workload = try UnixSocket.connect(path: path)
        defer { try? workload.close() }
        let (stand, other) = try UnixSocket.pair()
        defer { try? other.close() }
        try UnixSocket.send(workload, bytes: Array(#"[{"base_host_virt_addr":8192,"size":4096,"offset":0,"page_size":4096}]"#.utf8), descriptors: [stand])
        try stand.close()
        let handoff = try listener.accept()
        #expect(handoff.mappings == [RegionMapping(base: 8192, size: 4096, regionOffset: 0, pageSize: 4096)])
    }
}
