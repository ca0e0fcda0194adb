"""bpfnfs benchmark: overhead, agent cost, scale and transport (make bench)."""
