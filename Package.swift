// swift-tools-version:6.0
//
// FedLM: asynchronous federated pre-training of GPT-2-style language models.
//
// Linux only: it reads /proc, tunes glibc's malloc and spawns with posix_spawn.
//
// Layers (arrows point down only):
//   fedlm (CLI)
//     -> FedLMExperiment, FedLMMonitoring -> FedLMFederation
//     -> FedLMAggregation, FedLMLedger, FedLMProtocol, FedLMZeroMQ, FedLMCheckpoint, FedLMData
//     -> FedLMModel, FedLMTokenizer, FedLMHashing
//     -> FedLMTensor
//     -> CFedLMRuntime, COpenBLAS, CZeroMQ, CSQLite, CCrypto, CZlib
// The C system libraries (libzmq, OpenBLAS, SQLite, OpenSSL's libcrypto, zlib) are SwiftPM system-library targets with
// hand-written module maps; libzmq's pkg-config file is deliberately not used (it adds a krb5
// flag SwiftPM rejects).
import PackageDescription

let optimize: [SwiftSetting] = [.unsafeFlags(["-Ounchecked", "-wmo"], .when(configuration: .release))]

let package = Package(
    name: "FedLM",
    products: [
        .executable(name: "fedlm", targets: ["fedlm"]),
        .library(name: "FedLMModel", targets: ["FedLMModel"]),
        .library(name: "FedLMCheckpoint", targets: ["FedLMCheckpoint"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", exact: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log", exact: "1.16.2"),
        .package(url: "https://github.com/LebJe/TOMLKit", exact: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", exact: "2.13.0"),
        .package(url: "https://github.com/apple/swift-metrics", exact: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", exact: "2.4.1"),
        .package(url: "https://github.com/swhitty/FlyingFox", exact: "0.27.1"),
    ],
    targets: [
        // C system libraries.
        .systemLibrary(name: "CZeroMQ", path: "Sources/CZeroMQ", providers: [.apt(["libzmq3-dev"])]),
        .systemLibrary(name: "COpenBLAS", path: "Sources/COpenBLAS", pkgConfig: "openblas",
                       providers: [.apt(["libopenblas-dev"])]),
        .systemLibrary(name: "CSQLite", path: "Sources/CSQLite", pkgConfig: "sqlite3",
                       providers: [.apt(["libsqlite3-dev"])]),
        .systemLibrary(name: "CZlib", path: "Sources/CZlib", providers: [.apt(["zlib1g-dev"])]),
        .systemLibrary(name: "CCrypto", path: "Sources/CCrypto", pkgConfig: "libcrypto", providers: [.apt(["libssl-dev"])]),
        // A few lines of C for what Swift cannot reach: the MXCSR register and CPUID.
        .target(name: "CFedLMRuntime", path: "Sources/CFedLMRuntime"),

        // SHA-256 through the system's libcrypto: the digests that name shards, text and checkpoints.
        .target(name: "FedLMHashing", dependencies: ["CCrypto"]),
        // Tensor/BLAS layer: buffers, BLAS, threads, fast elementwise math.
        .target(name: "FedLMTensor",
                dependencies: ["COpenBLAS", "CFedLMRuntime", .product(name: "Logging", package: "swift-log")],
                swiftSettings: optimize),
        // GPT-2 model, hand-written backward, optimizers, configs.
        .target(name: "FedLMModel",
                dependencies: ["FedLMTensor", .product(name: "TOMLKit", package: "TOMLKit")],
                swiftSettings: optimize),
        // GPT-2 byte-level BPE: pre-tokenizer, BPE, trainer, Hugging Face tokenizer.json.
        .target(name: "FedLMTokenizer", dependencies: ["FedLMTensor"], swiftSettings: optimize),
        // Token shards, manifests, preparing text into shards, sampling training windows.
        .target(name: "FedLMData",
                dependencies: ["FedLMTokenizer", "FedLMModel", "FedLMTensor", "FedLMHashing", "CZlib"],
                swiftSettings: optimize),
        // A small Swift layer over libzmq: sockets, options, multipart messages, poller, relay.
        .target(name: "FedLMZeroMQ", dependencies: ["CZeroMQ"]),
        // Wire protocol v2: messages, codec, streams of tensor chunks with CRC-32C, validation (no I/O).
        .target(name: "FedLMProtocol", dependencies: ["CFedLMRuntime"], exclude: ["PROTOCOL.md"]),
        // The aggregator's SQLite ledger (WAL): trainers, updates, versions, metrics.
        .target(name: "FedLMLedger", dependencies: ["CSQLite"]),
        // Asynchronous and synchronous aggregation strategies and server optimizers (no I/O).
        .target(name: "FedLMAggregation", dependencies: ["FedLMModel", "FedLMTensor"], swiftSettings: optimize),
        // safetensors + Hugging Face config.json + optimizer state; atomic writes.
        .target(name: "FedLMCheckpoint",
                dependencies: ["FedLMModel", "FedLMHashing"],
                swiftSettings: optimize),
        // The federation's roles: broker, aggregator (core + service), trainer, subscriber, topologies.
        .target(name: "FedLMFederation",
                dependencies: ["FedLMAggregation", "FedLMLedger", "FedLMProtocol", "FedLMZeroMQ", "FedLMCheckpoint",
                               "FedLMData", "FedLMModel", "FedLMTensor", "FedLMHashing",
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "Logging", package: "swift-log"),
                               .product(name: "CoreMetrics", package: "swift-metrics"),
                               .product(name: "TOMLKit", package: "TOMLKit")],
                swiftSettings: optimize),
        // Watching a running federation: Prometheus metrics, the status API and the live dashboard over HTTP.
        // Test and benchmark tools (load generator, flooder, conformance checker): the commands
        // use them, the roles never import them.
        .target(name: "FedLMTools",
                dependencies: ["FedLMFederation", "FedLMAggregation", "FedLMProtocol", "FedLMZeroMQ", "FedLMModel", "FedLMTensor",
                               .product(name: "Logging", package: "swift-log")]),
        .target(name: "FedLMMonitoring",
                dependencies: ["FedLMFederation", "FedLMLedger",
                               .product(name: "Prometheus", package: "swift-prometheus"),
                               .product(name: "CoreMetrics", package: "swift-metrics"),
                               .product(name: "FlyingFox", package: "FlyingFox"),
                               .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                               .product(name: "Logging", package: "swift-log")]),
        // `fedlm experiment`: specs, learning curves, results tables and SVG plots.
        .target(name: "FedLMExperiment",
                dependencies: ["FedLMLedger", "FedLMModel", .product(name: "TOMLKit", package: "TOMLKit")]),
        .executableTarget(name: "fedlm",
                          dependencies: ["FedLMExperiment", "FedLMMonitoring", "FedLMTools", "FedLMProtocol", "FedLMZeroMQ", "FedLMModel", "FedLMCheckpoint", "FedLMTensor", "FedLMTokenizer", "FedLMData", "FedLMFederation",
                                         "FedLMLedger", "FedLMAggregation", "CFedLMRuntime",
                                         .product(name: "ArgumentParser", package: "swift-argument-parser"),
                                         .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                                         .product(name: "Logging", package: "swift-log"),
                                         .product(name: "TOMLKit", package: "TOMLKit")],
                          swiftSettings: optimize),

        // Shared by the test targets: finding and running the Python references.
        .target(name: "FedLMTestSupport", path: "Tests/FedLMTestSupport"),
        .testTarget(name: "SystemLibraryTests", dependencies: ["CZeroMQ", "COpenBLAS", "CSQLite", "FedLMTensor"]),
        .testTarget(name: "FedLMTensorTests", dependencies: ["FedLMTensor"]),
        .testTarget(name: "FedLMHashingTests", dependencies: ["FedLMHashing"]),
        .testTarget(name: "FedLMModelTests", dependencies: ["FedLMModel", "FedLMCheckpoint", "FedLMTestSupport"]),
        .testTarget(name: "FedLMTokenizerTests", dependencies: ["FedLMTokenizer", "FedLMTensor", "FedLMTestSupport"]),
        .testTarget(name: "FedLMZeroMQTests", dependencies: ["FedLMZeroMQ"]),
        .testTarget(name: "FedLMProtocolTests", dependencies: ["FedLMProtocol", "FedLMTensor"]),
        .testTarget(name: "FedLMLedgerTests", dependencies: ["FedLMLedger"]),
        .testTarget(name: "FedLMFederationTests",
                    dependencies: ["FedLMFederation", "FedLMAggregation", "FedLMProtocol", "FedLMModel", "FedLMLedger", "FedLMCheckpoint", "FedLMZeroMQ",
                                   "FedLMExperiment", "FedLMTensor", "FedLMTestSupport"]),
        .testTarget(name: "FedLMToolsTests", dependencies: ["FedLMTools", "FedLMFederation", "FedLMAggregation", "FedLMProtocol", "FedLMModel", "FedLMZeroMQ"]),
        .testTarget(name: "FedLMMonitoringTests", dependencies: ["FedLMMonitoring", "FedLMFederation", "FedLMLedger",
                                                                .product(name: "CoreMetrics", package: "swift-metrics")]),
        .testTarget(name: "FedLMAggregationTests", dependencies: ["FedLMAggregation", "FedLMModel"]),
        .testTarget(name: "FedLMDataTests", dependencies: ["FedLMData", "FedLMTokenizer", "FedLMModel"]),
        .testTarget(name: "FedLMCheckpointTests", dependencies: ["FedLMCheckpoint", "FedLMModel"]),
        .testTarget(name: "FedLMExperimentTests", dependencies: ["FedLMExperiment", "FedLMLedger"]),
        // Runs the built `fedlm` binary as a separate process (crash, signal and re-exec tests).
        .testTarget(name: "FedLMCLITests", dependencies: ["FedLMCheckpoint", "FedLMModel", "FedLMLedger", "FedLMFederation", "FedLMTestSupport"]),
    ]
)
