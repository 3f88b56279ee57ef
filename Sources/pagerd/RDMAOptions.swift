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

/// `pagerd dest --transport rdma`: the session's demand queue pair, for `client`'s session;
/// nil (logged as an error) when there is none: the workload's memory is already handed over,
/// so the migration goes on over TCP rather than fail for it.
func connectReads(_ client: DestinationClient, logger: Logger) -> (any PageReads)? {
    #if RDMA
    guard client.features.contains(.rdma), let key = client.admissionKey else {
        logger.error("session \(hex(client.session)): the source at \(client.source) did not accept rdma (it needs pagerd source --rdma, and keys on both sides): every page comes over TCP")
        return nil
    }
    do {
        let reads = try RDMAPageReads(address: client.source.host, port: client.source.port, session: client.session, admissionKey: key, logger: logger)
        logger.info("session \(hex(client.session)): RDMA queue pair connected to \(client.source); faults are read with RDMA READ")
        return reads
    } catch {
        logger.error("session \(hex(client.session)): no RDMA queue pair (\(error)): every page comes over TCP")
        return nil
    }
    #else
    logger.error(Logger.Message(stringLiteral: rdmaNotBuilt))
    return nil
    #endif
}
