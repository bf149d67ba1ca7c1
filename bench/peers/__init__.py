"""What the bench measures and drives: subjects (epollmux and its peers), backends, load generators, certificates."""
