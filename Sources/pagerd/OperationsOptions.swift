import ArgumentParser
import Logging
import PagerHandoff
import PagerKernel
import PagerOperations
import PagerOperationsCore

/// What every daemon offers its operators: a control socket for `pagerd status`, a
/// Prometheus endpoint, a textfile for node_exporter (`pagerd source`, `dest` and the QEMU
/// commands).
struct OperationsOptions: ParsableArguments {
    @Option(help: "Answer `pagerd status PATH` on this Unix socket (made with mode 0660).") var controlSocket: String?
    @Option(help: "Serve Prometheus metrics at http://ADDR:PORT/metrics (e.g. 127.0.0.1:9560).") var metricsListen: String?
    @Option(name: .customLong("metrics-label"), help: "A constant label NAME=VALUE on every metric (repeatable), e.g. domain=vm1.")
    var metricsLabels: [String] = []
    @Option(help: "At exit, write the metrics to this file in node_exporter's textfile format (written to a temporary name, then renamed).")
    var metricsTextfile: String?

    func validate() throws {
        if let metricsListen, Endpoint(metricsListen) == nil { throw ValidationError("--metrics-listen must be ADDR:PORT (IPv4), got \(metricsListen)") }
        _ = try constantLabels(role: "x")
        if let metricsTextfile, !metricsTextfile.hasSuffix(".prom") {
            throw ValidationError("--metrics-textfile must end in .prom (node_exporter's textfile collector reads only those), got \(metricsTextfile)")
        }
    }

    /// Label names the daemon's own series carry: an operator's label must not repeat one.
    static let daemonLabels: Set<String> = ["role", "region", "version", "outcome", "how", "kind", "state", "why", "le"]

    /// `role` and the operator's labels, checked.
    func constantLabels(role: String) throws -> [(String, String)] {
        var labels = [("role", role)]
        for text in metricsLabels {
            let parts = text.split(separator: "=", maxSplits: 1).map(String.init)
            guard parts.count == 2, MetricFamily.isValidLabelName(parts[0]) else {
                throw ValidationError("--metrics-label must be NAME=VALUE with NAME of letters, digits and _ (not starting with a digit or __), got \(text)")
            }
            guard !Self.daemonLabels.contains(parts[0]), !labels.contains(where: { $0.0 == parts[0] }) else {
                throw ValidationError("--metrics-label \(parts[0]) is given twice, or is one the daemon sets itself (\(Self.daemonLabels.sorted().joined(separator: ", ")))")
            }
            labels.append((parts[0], parts[1]))
        }
        return labels
    }

    /// Starts what was asked for; the returned handle writes the textfile and stops them.
    func start(role: String, socketGroup: String? = nil, document: @escaping @Sendable () -> JSONValue,
               metrics: @escaping @Sendable () -> [MetricFamily], logger: Logger) throws -> OperatorInterfaces {
        let labels = try constantLabels(role: role)
        let exposition: @Sendable () -> String = { Exposition.write(metrics(), constantLabels: labels) }
        var control: ControlServer?
        if let controlSocket {
            let server = try ControlServer(path: controlSocket, group: socketGroup) { request in
                request == "status" ? String(decoding: JSONWriter.encode(document()), as: UTF8.self) : nil
            }
            try server.start()
            logger.info("status on the control socket \(controlSocket) (pagerd status \(controlSocket))")
            control = server
        }
        var endpoint: MetricsEndpoint?
        if let metricsListen {
            let server = try MetricsEndpoint(listen: Endpoint(metricsListen)!, metrics: exposition)
            try server.start()
            logger.info("metrics on http://\(server.endpoint)/metrics")
            endpoint = server
        }
        return OperatorInterfaces(control: control, endpoint: endpoint, textfile: metricsTextfile, exposition: exposition, logger: logger)
    }
}

/// The running control socket and metrics endpoint of a daemon.
final class OperatorInterfaces: Sendable {
    let control: ControlServer?
    let endpoint: MetricsEndpoint?
    let textfile: String?
    let exposition: @Sendable () -> String
    let logger: Logger

    init(control: ControlServer?, endpoint: MetricsEndpoint?, textfile: String?, exposition: @escaping @Sendable () -> String, logger: Logger) {
        self.control = control
        self.endpoint = endpoint
        self.textfile = textfile
        self.exposition = exposition
        self.logger = logger
    }

    /// Writes the textfile (if asked for) with the final figures, then stops serving.
    func finish() {
        if let textfile {
            do { try MetricsTextfile.write(exposition(), to: textfile) } catch { logger.error("cannot write --metrics-textfile: \(error)") }
        }
        control?.stop()
        endpoint?.stop()
    }
}
