"""sslh compatibility: sslh's command line and libconfig file, translated into epollmux's configuration."""
