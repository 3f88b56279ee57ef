public enum PagerWireVersion { public static let current: UInt16 = 1 }
