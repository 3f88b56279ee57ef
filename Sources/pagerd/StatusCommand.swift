import ArgumentParser
import PagerHandoff
import PagerKernel
import PagerOperations
import PagerOperationsCore

struct StatusCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "status",
        abstract: "Show a running daemon's progress, read from its --control-socket.",
        discussion: """
        Asks the daemon listening on the control socket for its status: for a destination, \
        each migration's phase, memory local and remaining, rates, fault latency and outages; \
        for a source, its regions, open sessions and pre-copy rounds. With --json, the status \
        document itself (field names as QEMU's query-migrate where it has one). Exit status 69 \
        (EX_UNAVAILABLE) if no daemon answers.
        """
    )

    @Argument(help: "The daemon's control socket (its --control-socket).") var socket: String
    @Flag(help: "Print the status document as JSON, one line per query.") var json = false
    @Option(help: "Query again every this many seconds until interrupted.") var watch: Double?

    func validate() throws {
        if let watch, !(watch >= 0.1 && watch <= 86_400) { throw ValidationError("--watch must be 0.1 to 86400 seconds, got \(watch)") }
    }

    func run() throws {
        while true {
            let answer: String
            do { answer = try ControlClient.request("status", path: socket) } catch {
                printError("pagerd status: \(error)")
                throw ExitCode(ExitStatus.unavailable)
            }
            if json {
                print(answer)
            } else {
                do { print(StatusText.render(try JSONReader.parse(Array(answer.utf8), limits: .status))) } catch {
                    printError("pagerd status: the daemon at \(socket) answered what is not a status document (\(error)): \(answer.prefix(200))")
                    throw ExitCode(ExitStatus.protocolError)
                }
            }
            fflushStandardOutput()
            guard let watch else { return }
            if !json { print("") }
            sleepMilliseconds(Int(watch * 1000))
        }
    }
}
