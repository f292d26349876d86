"""Generated gRPC stubs of the `cmx.v1` wire contract (run `make proto`)."""
