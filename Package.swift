// swift-tools-version: 6.1
//
// pager: a remote pager for post-copy memory migration.
//
// Dependencies point one way (see ../shared/docs/STYLE.md):
//
//   CPagerKernel, CURing, CRDMA        C shims: headers and tiny inline helpers only
//   PagerKernel  -> CPagerKernel, CURing, SystemPackage
//                                      the only module that makes system calls
//   PagerWire    -> (nothing)          wire protocol v1, pure value types
//   PagerCore    -> (nothing)          page bookkeeping, pure and synchronous
//   PagerHandoff -> (nothing)          the workload's handoff messages (JSON), pure value types
//   CCrypto                            the system's libcrypto (OpenSSL 3): headers only
//   PagerCrypto  -> CCrypto            HMAC, HKDF, X25519, AES-256-GCM, constant-time compare
//   PagerTrust   -> PagerCrypto, PagerWire
//                                      keys (the key file) and the handshake's key schedule
//   PagerTransport -> PagerKernel, PagerWire, PagerCrypto, PagerTrust
//                                      a connection: FrameConnection, FrameChannel (TCP)
//   PagerSource, PagerDestination -> PagerKernel, PagerWire, PagerCore, PagerTransport,
//                                   PagerTrust, PagerCrypto
//                                      (+ PagerHandoff for the destination): the two services
//   PagerQEMU    -> the services       QMP, QEMUSource, QEMUDestination
//   PagerRDMATransport -> PagerRDMA, the services
//                                      (trait) PageReads and ReadService over PagerRDMA
//   PagerRDMA    -> PagerKernel, PagerCrypto (+ CRDMA with the trait)
//                                      one-sided READ: admission, in-flight READs and staging
//                                      slots (pure, always built); verbs and RDMA CM (trait)
//   PagerReport  -> (nothing)          what pagerd prints: latency summaries, fixed decimals
//   PagerWorkloads -> PagerKernel, PagerReport, Histogram, SystemPackage
//                                      the workload that is migrated (pager-workload, tests)
//   PagerHarness -> PagerKernel, PagerTrust  two namespaces, scratch dirs, children, QEMU runs (tests, pager-bench)
//   PagerBenchKit -> PagerKernel, PagerReport, PagerWorkloads, PagerHarness
//                                      pager-bench's measurements
//   pagerd       -> the services and PagerReport only: never the harness, the workloads or
//                   HdrHistogram (IntegrationTests' LinkageTests check its symbols)
//   other executables -> what they use
//
// RDMA (libibverbs, librdmacm) sits behind the `RDMA` trait, off by default, so the
// package builds on machines without those development packages.

import PackageDescription

let package = Package(
    name: "pager",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "pagerd", targets: ["pagerd"]),
        .executable(name: "pager-bench", targets: ["pager-bench"]),
        .executable(name: "pager-workload", targets: ["pager-workload"]),
        .executable(name: "uffd-fault-bench-c", targets: ["uffd-fault-bench-c"]),
        .executable(name: "pager-floor-c", targets: ["pager-floor-c"]),
        .executable(name: "pager-rdma-check", targets: ["pager-rdma-check"]),
        .executable(name: "PagerWireFuzz", targets: ["PagerWireFuzz"]),
        .executable(name: "PagerHandoffFuzz", targets: ["PagerHandoffFuzz"]),
        .executable(name: "PagerOperationsFuzz", targets: ["PagerOperationsFuzz"]),
        .library(name: "PagerWire", targets: ["PagerWire"]),
        .library(name: "PagerCore", targets: ["PagerCore"]),
        .library(name: "PagerHandoff", targets: ["PagerHandoff"]),
        .library(name: "PagerKernel", targets: ["PagerKernel"]),
        // LD_PRELOAD library for an unmodified QEMU destination (libpager-preload.so).
        .library(name: "pager-preload", type: .dynamic, targets: ["PagerPreload"]),
    ],
    traits: [
        .trait(
            name: "RDMA",
            description: "Build the RDMA transport against libibverbs and librdmacm (apt-get install libibverbs-dev librdmacm-dev)."
        ),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", from: "1.16.2"),
        // Latency percentiles in the benchmark tool (pure Swift; pulls in swift-numerics only).
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
    ],
    targets: [
        // MARK: C shims
        .target(
            name: "CPagerKernel",
            cSettings: [.define("_GNU_SOURCE")]
        ),
        .systemLibrary(
            name: "CURing",
            pkgConfig: "liburing",
            providers: [.apt(["liburing-dev"])]
        ),
        .systemLibrary(
            name: "CCrypto",
            pkgConfig: "libcrypto",
            providers: [.apt(["libssl-dev"])]
        ),
        .systemLibrary(
            name: "CRDMA",
            providers: [.apt(["libibverbs-dev", "librdmacm-dev"])]
        ),

        // Interposes mmap/mmap64 in QEMU to hand its guest RAM to pagerd (C: runs inside QEMU).
        .target(name: "PagerPreload", cSettings: [.define("_GNU_SOURCE")]),

        // MARK: Libraries
        .target(
            name: "PagerKernel",
            dependencies: [
                "CPagerKernel",
                "CURing",
                .target(name: "CRDMA", condition: .when(traits: ["RDMA"])),
                .product(name: "SystemPackage", package: "swift-system"),
            ]
        ),
        .target(name: "PagerWire"),
        .target(name: "PagerCore"),
        // The handoff's JSON: mappings, prefetch hints and replies (Protocols/handoff.md).
        .target(name: "PagerHandoff"),
        // Cryptographic primitives over libcrypto, one reused context per direction for AES-GCM.
        .target(name: "PagerCrypto", dependencies: ["CCrypto"]),
        // The key ring (QEMU's keys.psk format) and the handshake's transcript and key schedule.
        .target(name: "PagerTrust", dependencies: ["PagerCrypto", "PagerWire"]),
        // Frames over TCP: the page path's send (scatter-gather) and receive (into aligned buffers).
        .target(name: "PagerTransport", dependencies: ["PagerKernel", "PagerWire", "PagerCrypto", "PagerTrust"]),
        .target(
            name: "PagerDestination",
            dependencies: ["PagerKernel", "PagerWire", "PagerCore", "PagerHandoff", "PagerTransport", "PagerTrust", "PagerCrypto",
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .target(
            name: "PagerSource",
            dependencies: ["PagerKernel", "PagerWire", "PagerCore", "PagerTransport", "PagerTrust", "PagerCrypto",
                           .product(name: "Logging", package: "swift-log")]
        ),
        // Driving unmodified QEMU over QMP: the post-copy backend's two sides.
        .target(
            name: "PagerQEMU",
            dependencies: ["PagerKernel", "PagerWire", "PagerCore", "PagerHandoff", "PagerSource", "PagerDestination", "PagerTrust",
                           .product(name: "Logging", package: "swift-log"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The RDMA transport's parts: admission of queue pairs, READs in flight and their staging
        // slots, the source's grants (pure, always built); queue pairs, registrations and RDMA CM
        // behind the trait.
        .target(
            name: "PagerRDMA",
            dependencies: ["PagerKernel", "PagerCrypto", .target(name: "CRDMA", condition: .when(traits: ["RDMA"])),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The RDMA transport of the two services (RDMA trait): the destination's reads
        // (PageReads) and the source's admission, registrations and keys (ReadService).
        .target(
            name: "PagerRDMATransport",
            dependencies: ["PagerRDMA", "PagerKernel", "PagerWire", "PagerTransport", "PagerSource", "PagerDestination",
                           .target(name: "CRDMA", condition: .when(traits: ["RDMA"])),
                           .product(name: "Logging", package: "swift-log")]
        ),
        // What pagerd prints: latency summaries and fixed-decimal numbers (pure, no histogram).
        .target(name: "PagerReport"),
        // The workload the tests and benchmarks migrate (pager-workload's logic), with its
        // histogram summaries.
        .target(
            name: "PagerWorkloads",
            dependencies: ["PagerKernel", "PagerReport", .product(name: "Histogram", package: "hdrhistogram-swift"),
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        // The two-namespace harness: TwoHosts, Scratch, children's output, live and QEMU runs.
        // Tests and pager-bench only; never pagerd.
        // The operators' formats, pure (no sockets, fuzzed): Prometheus's text exposition, the
        // metrics endpoint's HTTP requests, `pagerd status`'s text.
        .target(name: "PagerOperationsCore", dependencies: ["PagerHandoff", "PagerReport"]),
        // What a daemon tells its operators: the control socket (status), the metrics
        // endpoint and textfile, the status documents and metric families of both roles.
        .target(
            name: "PagerOperations",
            dependencies: ["PagerKernel", "PagerCore", "PagerHandoff", "PagerReport", "PagerDestination", "PagerSource", "PagerOperationsCore",
                           .product(name: "SystemPackage", package: "swift-system")]
        ),
        .target(name: "PagerHarness", dependencies: ["PagerKernel", "PagerTrust", .product(name: "Logging", package: "swift-log")]),
        // pager-bench's measurements (library, so tests can run them too).
        .target(
            name: "PagerBenchKit",
            dependencies: ["PagerKernel", "PagerReport", "PagerWorkloads", "PagerHarness", "PagerCrypto"]
        ),

        // MARK: Executables
        .executableTarget(
            name: "pagerd",
            dependencies: [
                "PagerKernel", "PagerWire", "PagerCore", "PagerReport", "PagerSource", "PagerDestination", "PagerQEMU", "PagerTrust",
                "PagerOperations", "PagerOperationsCore", "PagerHandoff", "PagerRDMATransport",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "pager-bench",
            dependencies: [
                "PagerKernel", "PagerWire", "PagerReport", "PagerWorkloads", "PagerHarness", "PagerBenchKit", "PagerQEMU", "PagerDestination",
                "PagerTrust",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]
        ),
        // The workload that integration tests and benchmarks migrate.
        .executableTarget(
            name: "pager-workload",
            dependencies: ["PagerKernel", "PagerWorkloads", .product(name: "ArgumentParser", package: "swift-argument-parser")]
        ),
        // The same fault micro-benchmark in plain C, so pager-bench can show Swift's
        // overhead against C measured in the same run on the same machine.
        .executableTarget(
            name: "uffd-fault-bench-c",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        // The floors in plain C (a raw sender, the copy floor, the naive pager): what the
        // machine allows, measured by pager-bench in the same run as the pager.
        .executableTarget(
            name: "pager-floor-c",
            cSettings: [.define("_GNU_SOURCE")],
            linkerSettings: [.linkedLibrary("pthread")]
        ),
        // The RDMA check against a real device (soft-RoCE in Deploy/rdma-test.sh's guest): READs
        // between two queue pairs of one process, every byte verified, and the failure cases.
        .executableTarget(
            name: "pager-rdma-check",
            dependencies: ["PagerRDMA", "PagerKernel", "PagerCrypto", .target(name: "CRDMA", condition: .when(traits: ["RDMA"]))]
        ),
        // libFuzzer target for the wire decoder:
        //   swift build -c debug --sanitize fuzzer --sanitize address --product PagerWireFuzz -Xswiftc -DFUZZING \
        //       -Xswiftc -sanitize-coverage=edge,inline-8bit-counters,pc-table,trace-cmp (as Deploy/test.sh: coverage)
        .executableTarget(
            name: "PagerWireFuzz",
            dependencies: ["PagerWire", "PagerCore", "PagerKernel", "PagerTrust"]
        ),
        // libFuzzer target for the handoff decoders and the hint line splitter (same flags).
        .executableTarget(
            name: "PagerHandoffFuzz",
            dependencies: ["PagerHandoff", "PagerKernel"]
        ),
        // libFuzzer target for the metrics endpoint's request parser and `pagerd status`'s
        // reading of a daemon's answer (same flags).
        .executableTarget(
            name: "PagerOperationsFuzz",
            dependencies: ["PagerOperationsCore", "PagerHandoff", "PagerKernel"]
        ),

        // MARK: Tests
        .testTarget(name: "PagerWireTests", dependencies: ["PagerWire", "PagerCore"]),
        .testTarget(name: "PagerCoreTests", dependencies: ["PagerCore"]),
        // The destination's pure parts (huge-page assembly), with @testable access.
        .testTarget(name: "PagerDestinationTests", dependencies: ["PagerDestination", "PagerCore"]),
        // Pure decoder tests, plus the socket side of the handoff (HandoffListener.read on a socketpair).
        .testTarget(name: "PagerHandoffTests", dependencies: ["PagerHandoff", "PagerDestination", "PagerKernel"]),
        .testTarget(name: "PagerReportTests", dependencies: ["PagerReport"]),
        .testTarget(name: "PagerOperationsTests", dependencies: ["PagerOperations", "PagerOperationsCore", "PagerCore", "PagerHandoff", "PagerKernel"]),
        // Known-answer vectors (RFC 4231, RFC 5869, RFC 7748, GCM) for the primitives.
        .testTarget(name: "PagerCryptoTests", dependencies: ["PagerCrypto"]),
        .testTarget(name: "PagerTrustTests", dependencies: ["PagerTrust", "PagerCrypto", "PagerWire"]),
        .testTarget(name: "PagerKernelTests", dependencies: ["PagerKernel", .product(name: "SystemPackage", package: "swift-system")]),
        // The RDMA logic; with the trait also the verbs path against a fake device.
        .testTarget(
            name: "PagerRDMATests",
            dependencies: ["PagerRDMA", "PagerKernel", "PagerCrypto", .target(name: "CRDMA", condition: .when(traits: ["RDMA"]))]
        ),
        // The source in-process on loopback, with a destination from PagerDestination.
        .testTarget(
            name: "PagerSourceTests",
            dependencies: ["PagerKernel", "PagerWire", "PagerCore", "PagerTransport", "PagerSource", "PagerDestination", "PagerHarness", "PagerTrust",
                           .product(name: "Logging", package: "swift-log")]
        ),
        // FrameChannel over loopback TCP: fragmented reads, closes and truncations, concurrent senders.
        .testTarget(name: "PagerTransportTests", dependencies: ["PagerTransport", "PagerKernel", "PagerWire", "PagerCrypto"]),
        // Separate processes (release builds of pagerd and pager-workload) in network namespaces.
        .testTarget(
            name: "IntegrationTests",
            dependencies: ["PagerKernel", "PagerWire", "PagerCore", "PagerTransport", "PagerWorkloads", "PagerHarness",
                           "PagerSource", "PagerDestination", "PagerTrust", "PagerOperations", "PagerHandoff",
                           .product(name: "Logging", package: "swift-log"), .product(name: "SystemPackage", package: "swift-system")]
        ),
    ]
)
