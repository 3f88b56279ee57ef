import Testing
@testable import PagerCrypto
