"""The fuzz suite: property-based tests of the parsers and validators, and a mutation fuzzer that
drives a running local stack (`python -m tests.fuzz`, `make fuzz`; docs/fuzzing.md)."""
