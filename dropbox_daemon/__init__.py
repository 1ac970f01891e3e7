"""dropbox-daemon: turns job drops on folders into lip-synced videos."""

__version__ = "0.1.0"
