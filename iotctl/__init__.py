"""iotctl: one command-line tool for the IoT and messaging protocols."""

__version__ = "0.1.0"
