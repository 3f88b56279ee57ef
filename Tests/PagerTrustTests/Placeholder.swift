import Testing
@testable import PagerTrust
