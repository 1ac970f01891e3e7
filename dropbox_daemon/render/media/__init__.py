"""Media layer shared by every engine: probing, template frames, encoding, audio."""
