"""Jobs: what a command does end to end. The only layer that combines the rooms below it (backbones, transfer,
export, memory)."""
