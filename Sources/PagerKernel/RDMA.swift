import SystemPackage

#if RDMA
import CRDMA
import Glibc
#endif

/// RDMA devices (libibverbs), for the optional RDMA transport.
///
/// Built only with the `RDMA` package trait (`swift build --traits RDMA`, which needs
/// `libibverbs-dev` and `librdmacm-dev`); without it every probe reports that clearly.
public enum RDMADevices {
    /// Whether this build includes RDMA support.
    public static var compiledIn: Bool {
        #if RDMA
        true
        #else
        false
        #endif
    }

    /// Names of the RDMA devices on this host (`ibv_get_device_list`). Throws with the
    /// reason when there are none: no RDMA in the build, no InfiniBand support in the kernel
    /// (`ENOSYS`), or no device.
    public static func list() throws(KernelError) -> [String] {
        #if RDMA
        var count: Int32 = 0
        guard let devices = ibv_get_device_list(&count) else {
            throw KernelError("ibv_get_device_list", Errno(rawValue: Glibc.errno), detail: "no RDMA support in this kernel or no device")
        }
        defer { ibv_free_device_list(devices) }
        var names: [String] = []
        for i in 0..<Int(count) {
            if let device = devices[i], let name = ibv_get_device_name(device) { names.append(String(cString: name)) }
        }
        if names.isEmpty { throw KernelError("ibv_get_device_list", Errno.noSuchAddressOrDevice, detail: "no RDMA device on this host") }
        return names
        #else
        throw KernelError("ibv_get_device_list", .notSupported, detail: "built without the RDMA trait (swift build --traits RDMA)")
        #endif
    }
}
