"""sslh compatibility: sslh's command line and libconfig file, translated into epollmux's configuration.

Owns: reading what an sslh invocation describes and turning it into epollmux's own configuration.
Must not import: no rule of the layering table (it sits at the top, beside cli); each module says what it avoids.
"""
