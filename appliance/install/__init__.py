"""Hardware detection, profiles, weights, bundles (Python side of the installer)."""
