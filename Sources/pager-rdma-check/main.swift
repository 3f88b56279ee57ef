// pager-rdma-check: the RDMA transport against a real device. See Check.swift.
import PagerKernel
#if RDMA
exitProcess(runCheck(Array(CommandLine.arguments.dropFirst())))
#else
writeStandardError("pager-rdma-check: built without the RDMA trait (swift build --traits RDMA)\n")
exitProcess(69)
#endif
