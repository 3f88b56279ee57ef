import PagerKernel
import Synchronization

/// The server's hold/release gate: while held, no PAGE_DATA leaves the server (sessions may
/// connect and ask): a VM's RAM must not be served before the VM has stopped writing it.
/// Senders block on a condition and wake the moment it is released, or when what they serve
/// is abandoned (their session closes, the server stops: both call ``wakeAll()``).
final class ReleaseGate: Sendable {
    /// Read without the lock on every send: the demand path pays one load when not held.
    private let held = Atomic<Bool>(false)
    /// The same fact under the lock that waiters sleep on.
    private let state = WaitableState(false)

    func hold() {
        state.change { $0 = true }
        held.store(true, ordering: .releasing)
    }

    func release() {
        held.store(false, ordering: .releasing)
        state.change { $0 = false }
    }

    /// Whether pages are held now.
    var isHeld: Bool { held.load(ordering: .acquiring) }

    /// Wakes every waiting sender to check whether it was abandoned.
    func wakeAll() { state.wakeAll() }

    /// Returns true once released (at once if not held); false as soon as `abandoned` holds.
    func waitUntilReleased(unless abandoned: () -> Bool) -> Bool {
        if !held.load(ordering: .acquiring) { return true }
        var released = false
        _ = state.wait(until: { held in
            released = !held
            return released || abandoned()
        })
        return released
    }
}
