"""Bench tools run on their own: profilers (hotpaths, tlsprofile), interleaved A/B runs (plainab, tlsab), micro-benchmarks."""
