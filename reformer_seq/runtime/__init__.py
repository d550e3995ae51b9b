"""The machine: device and precision, atomic files and checkpoints, building and loading compiled
code, allocator and heap policy, execution policy."""
