import PagerKernel
import Testing

@Suite("RDMA device probe")
struct RDMATests {
    @Test("the probe lists devices, or says precisely why there are none")
    func probe() throws {
        do {
            let devices = try RDMADevices.list()
            #expect(!devices.isEmpty)
        } catch {
            // This machine has no RDMA device and no InfiniBand support in its kernel: the error
            // must say so rather than crash or return an empty list.
            #expect(error.operation == "ibv_get_device_list")
            #expect(!error.detail.isEmpty)
            if !RDMADevices.compiledIn { #expect(error.errno == .notSupported) }
        }
    }
}
