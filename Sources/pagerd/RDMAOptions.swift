import ArgumentParser
import Logging
import PagerDestination
import PagerKernel
import PagerRDMATransport
import PagerSource

/// How `pagerd dest` reads pages: over the TCP connections only, or faults by RDMA READ.
enum Transport: String, ExpressibleByArgument, CaseIterable {
    case tcp, rdma
}

/// Whether this pagerd was built with the RDMA transport (`swift build --traits RDMA`).
var rdmaCompiledIn: Bool {
    #if RDMA
    true
    #else
    false
    #endif
}

let rdmaNotBuilt = "this pagerd was built without RDMA (build it with swift build --traits RDMA, with libibverbs-dev and librdmacm-dev)"

/// `--rdma-device NAME`: the RDMA device the destination's queue pairs must be on.
struct RDMADeviceOption: ParsableArguments {
    @Option(help: "With --transport rdma: the RDMA device the queue pairs must be on (e.g. mlx5_0, rxe0; see rdma link); a queue pair the route to the source puts on another is refused (those pages come over TCP, and an error line says so). Default: the device the route picks.")
    var rdmaDevice: String?

    func validate(transport: Transport) throws {
        if rdmaDevice != nil && transport != .rdma { throw ValidationError("--rdma-device needs --transport rdma") }
    }
}

/// The refusals every RDMA option shares (`option` as the user gave it, when `on`): RDMA needs
/// the trait and keys (queue pairs are admitted under the session's), not encryption (READ
/// data is not sealed), and not pre-copy (live memory is not read by RDMA) where `precopy`.
func validateRDMA(_ on: Bool, _ option: String, keys: AuthenticationOptions, precopy: Bool) throws {
    guard on else { return }
    if !rdmaCompiledIn { throw ValidationError("\(option): \(rdmaNotBuilt)") }
    if keys.insecureNoAuth { throw ValidationError("\(option) needs authentication: queue pairs are admitted under the session's keys (drop --insecure-no-auth)") }
    if keys.encrypt { throw ValidationError("\(option) with --encrypt: pages read by RDMA READ are not encrypted; choose one") }
    if precopy { throw ValidationError("\(option) does not combine with pre-copy yet (live memory is not read by RDMA)") }
}

/// `pagerd source --rdma`: an RDMA CM listener on the TCP listener's address and port number,
/// serving authenticated sessions that offer rdma. Returns what stops it.
func startReadService(_ server: SourceServer, logger: Logger) throws -> () -> Void {
    #if RDMA
    let endpoint = server.listener.endpoint
    let service = try RDMAReadService(address: endpoint.host, port: endpoint.port, logger: logger)
    server.readService = service
    logger.info("RDMA: serving READ to authenticated destinations on \(endpoint) (RDMA CM)")
    return { service.stop() }
    #else
    throw ValidationError(rdmaNotBuilt)
    #endif
}

/// `pagerd dest --transport rdma`: the session's demand and push queue pairs, for `client`'s
/// session; nil (logged as an error) where one is not there: the workload's memory is already
/// handed over, so the migration goes on over TCP rather than fail for it (faults without
/// the demand one, the push without the push one).
func connectReads(_ client: DestinationClient, push wanted: Bool = true, device: String?, logger: Logger) -> (faults: (any PageReads)?, push: (any PageReads)?) {
    #if RDMA
    guard client.features.contains(.rdma), let key = client.admissionKey else {
        logger.error("session \(hex(client.session)): the source at \(client.source) did not accept rdma (it needs pagerd source --rdma, and keys on both sides): every page comes over TCP")
        return (nil, nil)
    }
    func connect(push: Bool, _ what: String) -> (any PageReads)? {
        let channel = push ? "push" : "demand"
        do {
            let reads = try RDMAPageReads(address: client.source.host, port: client.source.port, session: client.session, admissionKey: key,
                                          push: push, device: device, logger: logger)
            logger.info("session \(hex(client.session)): RDMA \(channel) queue pair connected to \(client.source); \(what) by RDMA READ")
            return reads
        } catch {
            logger.error("session \(hex(client.session)): no RDMA \(channel) queue pair (\(error)): \(what) over TCP")
            return nil
        }
    }
    return (connect(push: false, "faults are read"), wanted ? connect(push: true, "the push comes") : nil)
    #else
    logger.error(Logger.Message(stringLiteral: rdmaNotBuilt))
    return (nil, nil)
    #endif
}
