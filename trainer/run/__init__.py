"""What a run is, read by every stage after it: its configuration (presets, files, overrides) and its folder."""
