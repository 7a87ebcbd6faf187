"""The demo and its harness (Orthanc on loopback, free ports, dcmtk's environment), also used by
the tests and benchmarks. Nothing in the node's stages imports this package."""
