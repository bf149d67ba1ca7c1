"""Bench tools run on their own: profilers (hotpaths, tlsprofile, and the tracers they share), interleaved A/B runs (ab), micro-benchmarks (sniffcost, tlsmicro)."""
