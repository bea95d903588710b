"""segbill: replay Segment event exports into usage-based billing platforms."""

__version__ = "0.1.0"
