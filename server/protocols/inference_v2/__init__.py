"""The Open Inference Protocol (KServe V2, Triton) over gRPC and REST, so its clients work unchanged."""
