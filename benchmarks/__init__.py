"""Side-by-side benchmarks: each measures tickvisor against a baseline in the same run."""
