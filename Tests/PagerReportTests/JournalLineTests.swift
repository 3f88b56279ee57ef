import PagerReport
import Testing

@Suite("Journal lines")
struct JournalLineTests {
    @Test("syslog priorities per level, one line per entry, metadata before the message")
    func format() {
        #expect(["critical", "error", "warning", "notice", "info", "debug", "trace"].map(JournalLine.priority) == [2, 3, 4, 5, 6, 7, 7])
        #expect(JournalLine.format(level: "warning", label: "pagerd.dest", message: "two\nlines") == "<4>pagerd.dest: two lines\n")
        #expect(JournalLine.format(level: "info", label: "x", message: "m", metadata: "session=1") == "<6>x: session=1 m\n")
    }
}
