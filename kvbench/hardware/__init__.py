"""What this machine can say about itself: memory samplers, NVML, energy counters, the environment, timers;
each says why it is unavailable."""
